/**
 * The URL import, as a user with nothing but Deno meets it: `deno task release` output served on
 * 127.0.0.1, a script in an empty folder outside the repository with a fresh `DENO_DIR`, an
 * empty cache and its own `HOME` imports `<base>/mod.ts` and embeds texts with
 * all-minilm-l6-v2 (fetched by name into the user cache). Its vectors equal the local module's
 * bit for bit; a second run with the server stopped works from the caches; a tampered library
 * is refused with the digest error and nothing is cached. Also: the pinned digests equal a
 * fresh build, and `deno check <base>/mod.ts` passes in an empty folder.
 */
import * as assert from "node:assert/strict";
import { LIBRARY_SHA256 } from "../ffi/checksums.ts";
import { ISA_VARIANTS } from "../ffi/library.ts";
import { pipeline } from "../mod.ts";
import { ROOT, ZIG_BIN } from "../tools/_toolchain.ts";
import { libraryDigests, writeRelease } from "../tools/release.ts";

const TEXTS = ["Deno runs BERT from a URL", "Zig kernels, checked by SHA-256", "a third text"];

/** The user's script: embeds TEXTS and prints the vectors' bytes as base64. */
function userScript(base: string): string {
  return `import { pipeline } from "${base}/mod.ts";
using embed = await pipeline("feature-extraction", "all-minilm-l6-v2");
const out = await embed(${JSON.stringify(TEXTS)}, { pooling: "mean", normalize: true });
const bytes = new Uint8Array(out.data.buffer, out.data.byteOffset, out.data.byteLength);
console.log(JSON.stringify({ dims: out.dims, base64: btoa(String.fromCharCode(...bytes)) }));
`;
}

function base64Of(data: Float32Array): string {
  return btoa(
    String.fromCharCode(...new Uint8Array(data.buffer, data.byteOffset, data.byteLength)),
  );
}

/** A static file server over `root`; `tamper` flips a byte of every served library. */
function serveStatic(root: string, state: { tamper: boolean }): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    const path = decodeURIComponent(new URL(request.url).pathname);
    if (path.includes("..")) return new Response("bad path", { status: 400 });
    let data: Uint8Array;
    try {
      data = await Deno.readFile(`${root}${path}`);
    } catch {
      return new Response("not found", { status: 404 });
    }
    if (state.tamper && path.endsWith(".so")) data[data.length >> 1] ^= 0x5a;
    const type = path.endsWith(".ts") ? "application/typescript" : "application/octet-stream";
    return new Response(data as Uint8Array<ArrayBuffer>, { headers: { "content-type": type } });
  });
}

interface UserRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs deno as a user would, in `home`: the machine's environment (proxies, CA certificates)
 * without any SPARSEBERT_* or DENO_* variable, a fresh `DENO_DIR` and its own `HOME`.
 */
async function asUser(home: string, args: string[], cache: string): Promise<UserRun> {
  const env = Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([k]) => !/^(SPARSEBERT_|DENO_)/.test(k)),
  );
  Object.assign(env, { HOME: home, DENO_DIR: `${home}/deno_dir`, SPARSEBERT_CACHE: cache });
  env.NO_COLOR = "1";
  const out = await new Deno.Command(Deno.execPath(), { args, cwd: home, env, clearEnv: true })
    .output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

async function filesUnder(dir: string): Promise<string[]> {
  const found: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) found.push(...await filesUnder(path));
      else found.push(path);
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return found;
}

Deno.test("the module's sources need no import map: npm imports are inline, at deno.json's versions", async () => {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`));
  const map = config.imports as Record<string, string>;
  // Deno's own module graph of mod.ts: every import of every module, as written.
  const info = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "mod.ts"],
    cwd: ROOT,
    stdout: "piped",
  }).output();
  const graph = JSON.parse(new TextDecoder().decode(info.stdout)) as {
    modules: { specifier: string; dependencies?: { specifier: string }[] }[];
  };
  let inline = 0;
  for (const module of graph.modules.filter((m) => m.specifier.startsWith("file:"))) {
    for (const { specifier } of module.dependencies ?? []) {
      if (/^(\.{1,2}\/|node:)/.test(specifier)) continue;
      const npm = /^npm:((?:@[^/@]+\/)?[^/@]+)@([^/]+)/.exec(specifier);
      assert.ok(npm, `${module.specifier}: "${specifier}" does not resolve without deno.json`);
      assert.equal(`npm:${npm[1]}@${npm[2]}`, map[npm[1]], `${module.specifier}: ${npm[1]}`);
      inline++;
    }
  }
  assert.ok(inline > 0, "the module imports npm packages; none was seen");
});

Deno.test("the pinned library digests equal those of a fresh ReleaseFast build", async () => {
  const prefix = await Deno.makeTempDir({ prefix: "sparsebert_rebuild_" });
  try {
    const build = await new Deno.Command(ZIG_BIN, {
      args: ["build", "-Doptimize=ReleaseFast", "--prefix", prefix],
      cwd: ROOT,
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(build.code, 0, new TextDecoder().decode(build.stderr));
    const digests = await libraryDigests(`${prefix}/lib`);
    for (const isa of ISA_VARIANTS) {
      assert.equal(
        digests[isa],
        LIBRARY_SHA256[isa],
        `${isa}: a fresh build differs from ffi/checksums.ts; after a kernel change run ` +
          "`deno task release --pin --out DIR` and commit the file",
      );
    }
  } finally {
    await Deno.remove(prefix, { recursive: true });
  }
});

Deno.test({
  name:
    "a released module imported from a URL matches the local one, works offline, refuses tampering",
  sanitizeResources: false,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "sparsebert_url_import_" });
    const state = { tamper: false };
    let server: Deno.HttpServer<Deno.NetAddr> | null = null;
    try {
      await writeRelease({ out: `${work}/release`, noBuild: true, log: () => {} });
      server = serveStatic(`${work}/release`, state);
      const base = `http://127.0.0.1:${server.addr.port}`;
      const home = `${work}/user`;
      await Deno.mkdir(home);
      await Deno.writeTextFile(`${home}/embed.ts`, userScript(base));
      const cache = `${work}/cache`;

      const checked = await asUser(home, ["check", `${base}/mod.ts`], cache);
      assert.equal(checked.code, 0, `deno check ${base}/mod.ts failed:\n${checked.stderr}`);

      using local = await pipeline("feature-extraction", "all-minilm-l6-v2");
      const expected = await local(TEXTS, { pooling: "mean", normalize: true });

      const first = await asUser(home, ["run", "-A", "embed.ts"], cache);
      assert.equal(first.code, 0, `the URL import failed:\n${first.stderr}`);
      const got = JSON.parse(first.stdout.trim().split("\n").at(-1)!);
      assert.deepEqual(got.dims, expected.dims);
      assert.equal(got.base64, base64Of(expected.data), "remote embeddings differ from local");
      const cached = (await filesUnder(cache)).map((p) => p.slice(cache.length));
      assert.ok(cached.some((p) => /^\/lib\/.*\/libsparsebert_baseline\.so$/.test(p)), `${cached}`);
      assert.ok(cached.some((p) => p.startsWith("/models/all-minilm-l6-v2/")), `${cached}`);

      await server.shutdown();
      server = null;
      const offline = await asUser(home, ["run", "-A", "embed.ts"], cache);
      assert.equal(offline.code, 0, `the second run, server stopped, failed:\n${offline.stderr}`);
      assert.equal(JSON.parse(offline.stdout.trim().split("\n").at(-1)!).base64, got.base64);

      state.tamper = true;
      server = serveStatic(`${work}/release`, state);
      const tamperedBase = `http://127.0.0.1:${server.addr.port}`;
      await Deno.writeTextFile(`${home}/embed.ts`, userScript(tamperedBase));
      const emptyCache = `${work}/cache_tampered`;
      const tampered = await asUser(home, ["run", "-A", "embed.ts"], emptyCache);
      assert.notEqual(tampered.code, 0, "a tampered library must not load");
      assert.match(
        tampered.stderr,
        /Refusing the kernel library libsparsebert_\w+\.so from .*: its SHA-256 is [0-9a-f]{64}, but this module pins [0-9a-f]{64}\. Nothing was written/,
      );
      const leftovers = (await filesUnder(`${emptyCache}/lib`)).filter((p) => p.includes(".so"));
      assert.deepEqual(leftovers, [], "nothing of a tampered library may be cached");
    } finally {
      await server?.shutdown();
      await Deno.remove(work, { recursive: true });
    }
  },
});
