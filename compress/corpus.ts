/**
 * The unlabeled English text `deno task cli sparsify` distills on, and the check that it never
 * holds the evaluation texts.
 *
 * The source is WordNet 3.0 as Debian ships it (package `wordnet-base`, `/usr/share/wordnet/
 * data.{noun,verb,adj,adv}`; WordNet license, free to use and redistribute): every synset's gloss
 * holds a definition and often example sentences in double quotes. {@linkcode wordnetTexts}
 * cleans them into texts: each definition as `lemma: definition`, each example on its own;
 * parenthesised asides and a trailing `e.g.` list are kept, texts of fewer than 4 or more than
 * 60 words or with characters outside printable ASCII are dropped, and duplicates go.
 * {@linkcode buildCorpus} fetches the package with `apt-get download` (no root, nothing
 * installed), unpacks it with `dpkg-deb -x` and writes one text per line.
 *
 * {@linkcode overlapWith} finds training texts that share a normalised text or a run of 8
 * words with an evaluation text; {@linkcode assertNoOverlap} refuses them.
 *
 * @module
 */

import { exists } from "../formats/fs.ts";

/** The Debian package the corpus comes from. */
export const CORPUS_PACKAGE = "wordnet-base";
/** Where {@linkcode buildCorpus} writes by default. */
export const DEFAULT_CORPUS = ".cache/corpus/wordnet.txt";
const WORDNET_FILES = ["data.noun", "data.verb", "data.adj", "data.adv"];
const SHINGLE = 8;

/** Splits a WordNet gloss into its definitions and its quoted examples. */
export function splitGloss(gloss: string): { definitions: string[]; examples: string[] } {
  const examples: string[] = [];
  const rest = gloss.replace(/"([^"]*)"/g, (_, ex: string) => {
    examples.push(ex);
    return "";
  });
  const definitions = rest.split(";").map((d) => d.trim()).filter((d) => d !== "");
  return { definitions, examples };
}

/** One text cleaned: whitespace collapsed, trailing separators gone; null when it is dropped. */
export function cleanText(text: string): string | null {
  let t = text.replace(/\s+/g, " ").trim().replace(/^[;:,\s-]+|[;:,\s-]+$/g, "").trim();
  if (t === "") return null;
  // Printable ASCII only (WordNet is ASCII; this drops stray control or encoding debris).
  if (!/^[\x20-\x7e]+$/.test(t)) return null;
  // Unbalanced brackets or quotes mean a cut gloss.
  if ((t.match(/\(/g)?.length ?? 0) !== (t.match(/\)/g)?.length ?? 0)) return null;
  if (t.includes('"')) return null;
  const words = t.split(" ").length;
  if (words < 4 || words > 60) return null;
  if (!/[a-zA-Z]/.test(t[0])) return null;
  t = t[0].toUpperCase() + t.slice(1);
  return t;
}

/**
 * The texts of WordNet `data.*` files: per synset `lemma: definition` for each definition and
 * each example sentence, cleaned ({@linkcode cleanText}), duplicates removed, in file order.
 */
export function wordnetTexts(files: string[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  const add = (t: string | null): void => {
    if (t === null) return;
    const key = normalizeText(t);
    if (seen.has(key)) return;
    seen.add(key);
    out.push(t);
  };
  for (const file of files) {
    for (const line of file.split("\n")) {
      // The license header lines start with two spaces; data lines with the synset offset.
      if (!/^\d{8} /.test(line)) continue;
      const bar = line.indexOf(" | ");
      if (bar < 0) continue;
      const fields = line.slice(0, bar).split(" ");
      const lemma = (fields[4] ?? "").replace(/_/g, " ").replace(/\(.*\)$/, "");
      const { definitions, examples } = splitGloss(line.slice(bar + 3));
      for (const d of definitions) {
        const c = cleanText(d);
        if (c !== null && lemma !== "") add(cleanText(`${lemma}: ${d}`));
      }
      for (const e of examples) add(cleanText(e));
    }
  }
  return out;
}

/** Lower case, letters and digits only, single spaces: the form texts are compared in. */
export function normalizeText(text: string): string {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, " ").trim();
}

function shingles(words: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i + SHINGLE <= words.length; i++) {
    out.push(words.slice(i, i + SHINGLE).join(" "));
  }
  return out;
}

/**
 * The training texts that overlap the evaluation texts: equal after {@linkcode normalizeText},
 * or sharing a run of 8 consecutive words (shorter evaluation texts: contained whole).
 */
export function overlapWith(
  training: string[],
  evaluation: string[],
): { index: number; text: string; evaluation: string }[] {
  const whole = new Map<string, string>();
  const runs = new Map<string, string>();
  const short: [string, string][] = [];
  for (const e of evaluation) {
    const n = normalizeText(e);
    if (n === "") continue;
    whole.set(n, e);
    const words = n.split(" ");
    if (words.length < SHINGLE) short.push([` ${n} `, e]);
    for (const s of shingles(words)) runs.set(s, e);
  }
  const found: { index: number; text: string; evaluation: string }[] = [];
  training.forEach((t, index) => {
    const n = normalizeText(t);
    let hit = whole.get(n);
    if (hit === undefined) {
      for (const s of shingles(n.split(" "))) {
        hit = runs.get(s);
        if (hit !== undefined) break;
      }
    }
    if (hit === undefined && short.length > 0) {
      const padded = ` ${n} `;
      hit = short.find(([s]) => padded.includes(s))?.[1];
    }
    if (hit !== undefined) found.push({ index, text: t, evaluation: hit });
  });
  return found;
}

/**
 * Throws when any training text overlaps an evaluation text ({@linkcode overlapWith}), naming
 * the count and the first pair.
 */
export function assertNoOverlap(
  training: string[],
  evaluation: string[],
  names: { training: string; evaluation: string },
): void {
  const found = overlapWith(training, evaluation);
  if (found.length === 0) return;
  const first = found[0];
  throw new Error(
    `Refusing to train on "${names.training}": ${found.length} of its texts overlap the evaluation texts of "${names.evaluation}" (first: line ${
      first.index + 1
    } "${first.text}" matches "${first.evaluation}"); remove them`,
  );
}

async function run(cmd: string, args: string[], cwd: string): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  } catch (err) {
    throw new Error(`Cannot run ${cmd}: ${(err as Error).message}`, { cause: err });
  }
  if (!out.success) {
    const msg = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    throw new Error(`${cmd} ${args.join(" ")} failed (exit ${out.code}): ${msg}`);
  }
}

/**
 * Builds the corpus file (default {@linkcode DEFAULT_CORPUS}) from Debian's `wordnet-base`
 * unless it exists (`force` rebuilds). Needs `apt-get` and `dpkg-deb` (Debian or Ubuntu) and
 * the Debian archive.
 *
 * @returns the file and its number of texts.
 */
export async function buildCorpus(
  output = DEFAULT_CORPUS,
  options: { force?: boolean } = {},
): Promise<{ path: string; texts: number; built: boolean }> {
  if (!options.force && await exists(output)) {
    const n = (await Deno.readTextFile(output)).split("\n").filter((l) => l !== "").length;
    return { path: output, texts: n, built: false };
  }
  const work = await Deno.makeTempDir({ prefix: "sparsebert-corpus-" });
  try {
    await run("apt-get", ["download", CORPUS_PACKAGE], work);
    const deb = [...Deno.readDirSync(work)].find((e) => e.name.endsWith(".deb"));
    if (!deb) throw new Error(`apt-get download ${CORPUS_PACKAGE} wrote no .deb file`);
    await run("dpkg-deb", ["-x", deb.name, "root"], work);
    const files = await Promise.all(
      WORDNET_FILES.map((f) => Deno.readTextFile(`${work}/root/usr/share/wordnet/${f}`)),
    );
    const texts = wordnetTexts(files);
    const dir = output.slice(0, output.lastIndexOf("/"));
    if (dir) await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(output, texts.join("\n") + "\n");
    return { path: output, texts: texts.length, built: true };
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}
