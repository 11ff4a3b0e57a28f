/**
 * The ONNX schema: `formats/onnx_pb.ts` is what `formats/onnx.proto` generates (its recorded
 * hash, and a regeneration where the generator is installed), the data and attribute type numbers
 * of `onnx_types.ts` are the official ones, and the encoder and decoder built on the generated
 * code round-trip every field the importers read, raw data as views into the file buffer.
 */
import assert from "node:assert/strict";
import { fromBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import {
  AttributeProto_AttributeType,
  ModelProtoSchema,
  TensorProto_DataType,
} from "../formats/onnx_pb.ts";
import { decodeOnnxModel, readOnnxModel } from "../formats/onnx_proto.ts";
import { makeAttribute, makeTensor, rawTensor } from "../formats/onnx_tensors.ts";
import {
  AttributeType,
  DataType,
  type OnnxGraph,
  type OnnxModel,
  type OnnxTensor,
} from "../formats/onnx_types.ts";
import { encodeOnnxModel, type OnnxModelInit, writeOnnxModel } from "../formats/onnx_write.ts";
import { sha256Hex } from "../ffi/download.ts";
import { ONNX_VERSION, PROTOBUF_ES_VERSION } from "../tools/gen_onnx_schema.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const GENERATED = await Deno.readTextFile(`${ROOT}formats/onnx_pb.ts`);

Deno.test("onnx schema: onnx_pb.ts names the onnx.proto it was generated from", async () => {
  const sha = await sha256Hex(await Deno.readFile(`${ROOT}formats/onnx.proto`));
  assert.match(GENERATED, new RegExp(`onnx ${ONNX_VERSION.replaceAll(".", "\\.")}, sha256 ${sha}`));
  const denoJson = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  assert.equal(
    denoJson.imports["@bufbuild/protobuf"],
    `npm:@bufbuild/protobuf@${PROTOBUF_ES_VERSION}`,
  );
  assert.doesNotMatch(GENERATED, /from "@bufbuild/, "imports are pinned npm: specifiers");
});

const generatorInstalled = await Deno.stat(`${ROOT}.tools/protogen/node_modules/.bin/buf`).then(
  () => true,
  () => false,
);

Deno.test({
  name: "onnx schema: regenerating onnx_pb.ts from onnx.proto gives the committed file",
  ignore: !generatorInstalled, // `deno task gen:onnx` installs it (npm)
  fn: async () => {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}tools/gen_onnx_schema.ts`, "--check"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
  },
});

Deno.test("onnx schema: DataType and AttributeType are the official numbers", () => {
  for (const [name, value] of Object.entries(DataType)) {
    assert.equal(TensorProto_DataType[name as keyof typeof TensorProto_DataType], value, name);
  }
  for (const [name, value] of Object.entries(AttributeType)) {
    assert.equal(
      AttributeProto_AttributeType[name as keyof typeof AttributeProto_AttributeType],
      value,
      name,
    );
  }
});

/** A model using every field the decoder reads: typed value fields, all attribute kinds. */
function everyFieldModel(): OnnxModel {
  const typed: OnnxTensor = {
    ...rawTensor("typed", DataType.FLOAT, [2], null),
    floatData: Float32Array.of(1.5, -2),
  };
  const ints: OnnxTensor = {
    ...rawTensor("ints", DataType.INT64, [3], null),
    int64Data: BigInt64Array.of(-1n, 0n, 9007199254740993n),
  };
  const sub: OnnxGraph = {
    name: "body",
    nodes: [{
      name: "n",
      opType: "Identity",
      domain: "",
      inputs: ["a"],
      outputs: ["b"],
      attributes: [],
    }],
    initializers: [makeTensor("c", DataType.INT32, [2], [4, 5])],
    inputs: [{ name: "a", elemType: DataType.FLOAT, shape: [1] }],
    outputs: [{ name: "b", elemType: DataType.FLOAT, shape: null }],
    valueInfo: [],
  };
  const graphAttr = { ...makeAttribute("then_branch", 0), type: AttributeType.GRAPH, g: sub };
  const strings = {
    ...makeAttribute("names", 0),
    type: AttributeType.STRINGS,
    strings: [new TextEncoder().encode("x"), new Uint8Array(0)],
  };
  return {
    irVersion: 8,
    opsetImport: [{ domain: "", version: 17 }, { domain: "com.microsoft", version: 1 }],
    producerName: "sparsebert-test",
    producerVersion: "1",
    domain: "test",
    modelVersion: 3,
    metadata: { a: "1", b: "two" },
    graph: {
      name: "g",
      nodes: [{
        name: "node0",
        opType: "Custom",
        domain: "com.microsoft",
        inputs: ["x", ""],
        outputs: ["y"],
        attributes: [
          makeAttribute("alpha", 0.25, "float"),
          makeAttribute("axis", -1),
          makeAttribute("mode", "constant"),
          makeAttribute("scales", [0.5, 2], "floats"),
          makeAttribute("perm", [0, 2, 1]),
          makeAttribute("value", makeTensor("v", DataType.FLOAT, [2], [3, 4])),
          graphAttr,
          strings,
        ],
      }],
      initializers: [
        makeTensor("w", DataType.FLOAT, [2, 3], [1, 2, 3, 4, 5, 6]),
        rawTensor("empty", DataType.FLOAT, [0, 4], new Uint8Array(0)),
        typed,
        ints,
      ],
      inputs: [{ name: "x", elemType: DataType.FLOAT, shape: ["batch", null, 384] }],
      outputs: [{ name: "y", elemType: DataType.FLOAT, shape: [] }],
      valueInfo: [{ name: "t", elemType: 0, shape: null }],
    },
  };
}

/** The decoder's view of a model: byte fields as plain arrays, so views compare by value. */
function plain(m: OnnxModel): unknown {
  return JSON.parse(
    JSON.stringify(
      m,
      (_, v) =>
        v instanceof Uint8Array || ArrayBuffer.isView(v)
          ? Array.from(v as Uint8Array, (x) => (typeof x === "bigint" ? String(x) : x))
          : v,
    ),
  );
}

Deno.test("onnx schema: encode then decode returns every field", () => {
  const model = everyFieldModel();
  const bytes = encodeOnnxModel(model);
  assert.deepEqual(plain(decodeOnnxModel(bytes)), plain(model));
  // The generated schema reads the same bytes on its own (no hand-written field walk involved).
  const proto = fromBinary(ModelProtoSchema, bytes);
  assert.equal(proto.graph?.initializer.length, 4);
  assert.equal(proto.graph?.node[0].attribute[6].g?.node[0].opType, "Identity");
});

Deno.test("onnx schema: raw data decodes as views into the file buffer, not copies", () => {
  const bytes = encodeOnnxModel(everyFieldModel());
  const w = decodeOnnxModel(bytes).graph.initializers[0];
  assert.equal(w.rawData!.buffer, bytes.buffer);
  assert.ok(w.rawData!.byteOffset > 0 && w.rawData!.byteOffset < bytes.byteLength);
});

Deno.test("onnx schema: lazy initializers stream into external data and read back", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-schema-" });
  try {
    const source = everyFieldModel();
    let produced = 0;
    const big = Float32Array.from({ length: 1000 }, (_, i) => i / 7);
    const model: OnnxModelInit = {
      ...source,
      graph: {
        ...source.graph,
        initializers: [...source.graph.initializers, {
          name: "lazy",
          dataType: DataType.FLOAT,
          dims: [10, 100],
          produce: () => {
            produced++;
            return new Uint8Array(big.buffer);
          },
        }],
      },
    };
    const sizes = await writeOnnxModel(`${dir}/m.onnx`, model, {
      externalData: { location: "m.data", threshold: 1024 },
    });
    assert.equal(produced, 1);
    assert.equal(sizes.externalBytes, 4000);
    const read = await readOnnxModel(`${dir}/m.onnx`);
    const lazy = read.graph.initializers.find((t) => t.name === "lazy")!;
    assert.deepEqual(lazy.externalData, { location: "m.data", offset: 0, length: 4000 });
    assert.deepEqual(new Float32Array(lazy.rawData!.slice().buffer), big);
    const rest = {
      ...read,
      graph: { ...read.graph, initializers: read.graph.initializers.slice(0, 4) },
    };
    assert.deepEqual(plain(rest), plain(source));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("onnx schema: garbage, truncation and runaway nesting fail with the label", () => {
  const bytes = encodeOnnxModel(everyFieldModel());
  const cases: [string, Uint8Array][] = [
    ["cut", bytes.subarray(0, bytes.length - 3)],
    ["garbage", Uint8Array.from({ length: 64 }, (_, i) => (i * 97 + 13) & 0xff)],
    ["empty", new Uint8Array(0)],
    // GraphProto.node (1) nested 200 deep inside attribute.g (6) -> recursion limit, no overflow.
    ["deep", nested(200)],
  ];
  for (const [label, data] of cases) {
    assert.throws(() => decodeOnnxModel(data, label), (err: Error) => {
      assert.match(err.message, new RegExp(`Cannot parse ONNX model "${label}"`));
      if (label === "deep") assert.match(err.message, /maximum recursion depth/);
      return true;
    });
  }
});

/** ModelProto.graph -> node -> attribute -> g -> node -> ... `depth` times, length-prefixed. */
function nested(depth: number): Uint8Array {
  const frame = (field: number, inner: Uint8Array): Uint8Array =>
    new BinaryWriter().tag(field, WireType.LengthDelimited).bytes(inner).finish();
  let graph: Uint8Array = new Uint8Array(0);
  for (let i = 0; i < depth; i++) graph = frame(1, frame(5, frame(6, graph))); // node.attr.g
  return frame(7, graph);
}
