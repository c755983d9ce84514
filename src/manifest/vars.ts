/**
 * BOSH-style `((name))` interpolation. It runs on the parsed YAML Document, before schema
 * validation, so a var can stand for any YAML value (`azs: ((azs))` is a whole list) and the
 * schema then checks the substituted value like anything the user typed.
 *
 * Every var is treated as a secret: the design rule is that `((vars))` never appear in output,
 * logs, plans or errors. Nodes that came from a var are recorded in `YamlFile.varOrigins` so
 * error messages can say `((name))` instead of the value, and `makeRedactor` turns values back
 * into `((name))` in free text.
 */
import { isMap, isPair, isScalar, isSeq, Scalar, type Node } from 'yaml';
import { userError } from '../errors.js';
import type { UsedVar } from './types.js';
import { readYamlFile, toPosition, type YamlFile } from './yaml.js';

/** `!` is BOSH's marker for "do not generate this var"; it is not part of the name. */
const VAR_REF = /\(\((!?)([A-Za-z0-9_.\-/]+)\)\)/g;
const EXACT_VAR_REF = /^\(\((!?)([A-Za-z0-9_.\-/]+)\)\)$/;

export interface VarSources {
  /** `--var k=v`: always strings, and they win over every vars file */
  vars?: Record<string, string>;
  /** `--vars-file F`, in command-line order: a later file wins over an earlier one */
  varsFiles?: string[];
}

interface VarEntry {
  value: unknown;
  /** the node in the vars file, kept so scalars keep their source text (`621.740`) */
  node?: unknown;
}

export type VarStore = Map<string, VarEntry>;

export function loadVarStore(sources: VarSources = {}): VarStore {
  const store: VarStore = new Map();
  for (const file of sources.varsFiles ?? []) {
    const y = readYamlFile(file, { what: 'vars file', secret: true, hint: 'check the path given to --vars-file' });
    const contents = y.doc.contents;
    if (contents === null || (isScalar(contents) && contents.value === null)) continue;
    if (!isMap(contents)) {
      throw userError('vars_file_invalid', `${file}: a vars file must be a map of var names to values`, {
        hint: 'write one `name: value` per line',
        location: { file, line: 1, column: 1 },
      });
    }
    const js = y.doc.toJS() as Record<string, unknown>;
    for (const pair of contents.items) {
      if (!isPair(pair)) continue;
      const key = isScalar(pair.key) ? pair.key.value : pair.key;
      if (typeof key !== 'string' && typeof key !== 'number') continue;
      const name = String(key);
      store.set(name, { value: js[name], node: pair.value });
    }
  }
  for (const [name, value] of Object.entries(sources.vars ?? {})) store.set(name, { value });
  return store;
}

export interface VarProblem {
  /** the reference as written, without `((` `))` */
  name: string;
  file: string;
  line: number;
  column: number;
  /** why it could not be used; undefined: the var is not set at all */
  problem?: string;
}

export interface InterpolationResult {
  used: UsedVar[];
  /** vars that are not set (or a `.key` that is not in a map var) */
  missing: VarProblem[];
  /** vars that are set but cannot be used where they are (a map inside a longer string) */
  invalid: VarProblem[];
}

type Lookup = { ok: true; value: unknown; node?: unknown } | { ok: false; problem?: string };

function lookup(store: VarStore, name: string): Lookup {
  const direct = store.get(name);
  if (direct) return { ok: true, value: direct.value, node: direct.node };
  // Names may contain dots themselves, so the longest prefix that is a var wins.
  for (let i = name.lastIndexOf('.'); i > 0; i = name.lastIndexOf('.', i - 1)) {
    const base = store.get(name.slice(0, i));
    if (!base) continue;
    let value: unknown = base.value;
    let node: unknown = base.node;
    for (const key of name.slice(i + 1).split('.')) {
      if (value === null || typeof value !== 'object') {
        return { ok: false, problem: `var '${name.slice(0, i)}' is not a map with key '${name.slice(i + 1)}'` };
      }
      if (!Object.prototype.hasOwnProperty.call(value, key)) {
        return { ok: false, problem: `var '${name.slice(0, i)}' has no key '${name.slice(i + 1)}'` };
      }
      value = (value as Record<string, unknown>)[key];
      node = childNode(node, key);
    }
    return { ok: true, value, node };
  }
  return { ok: false };
}

function childNode(node: unknown, key: string): unknown {
  if (isMap(node)) return node.items.find((p) => isScalar(p.key) && String(p.key.value) === key)?.value;
  if (isSeq(node) && /^\d+$/.test(key)) return node.items[Number(key)];
  return undefined;
}

/**
 * Replaces `((name))` in every value of the document (map keys are left alone: a key that
 * depends on a secret is not something BOSH manifests do). Substituted values are not
 * interpolated again: a secret that happens to contain `((` stays as it is.
 * Mutates `y.doc` and records substituted nodes in `y.varOrigins`.
 */
export function interpolateDocument(y: YamlFile, store: VarStore): InterpolationResult {
  const used = new Map<string, unknown>();
  const missing: VarProblem[] = [];
  const invalid: VarProblem[] = [];

  const where = (node: Scalar) => {
    const pos = node.range ? toPosition(y.lineCounter, node.range[0]) : { line: 1, column: 1 };
    return { file: y.file, line: pos.line, column: pos.column };
  };

  const substitute = (node: unknown): unknown => {
    if (isMap(node)) {
      for (const pair of node.items) pair.value = substitute(pair.value) as typeof pair.value;
      return node;
    }
    if (isSeq(node)) {
      node.items = node.items.map(substitute);
      return node;
    }
    if (!isScalar(node) || typeof node.value !== 'string' || !node.value.includes('((')) return node;
    const text = node.value;

    const exact = EXACT_VAR_REF.exec(text);
    if (exact) {
      const name = exact[2]!;
      const found = lookup(store, name);
      if (!found.ok) {
        missing.push({ name, ...where(node), problem: found.problem });
        return node;
      }
      used.set(name, found.value);
      const replacement = y.doc.createNode(found.value, { aliasDuplicateObjects: false }) as Node;
      if (isScalar(replacement) && isScalar(found.node) && typeof found.node.source === 'string') {
        replacement.source = found.node.source;
      }
      // An anchored value must stay reachable from its aliases.
      if (node.anchor) replacement.anchor = node.anchor;
      y.varOrigins.set(replacement, `((${name}))`);
      return replacement;
    }

    let changed = false;
    const out = text.replace(VAR_REF, (whole, _bang: string, name: string) => {
      const found = lookup(store, name);
      if (!found.ok) {
        missing.push({ name, ...where(node), problem: found.problem });
        return whole;
      }
      if (found.value !== null && typeof found.value === 'object') {
        invalid.push({
          name,
          ...where(node),
          problem: `((${name})) is a ${Array.isArray(found.value) ? 'list' : 'map'} and cannot be part of a longer string`,
        });
        return whole;
      }
      used.set(name, found.value);
      changed = true;
      return inlineText(found.value, found.node);
    });
    if (changed) {
      y.varOrigins.set(node, text);
      node.value = out;
    }
    return node;
  };

  y.doc.contents = substitute(y.doc.contents) as typeof y.doc.contents;
  return { used: [...used].map(([name, value]) => ({ name, value })), missing, invalid };
}

function inlineText(value: unknown, node: unknown): string {
  if (value === null || value === undefined) return '';
  if (typeof value === 'number' && isScalar(node) && typeof node.source === 'string' && node.source !== '') {
    return node.source;
  }
  return String(value);
}

/** Throws one error listing every missing var with every place it is used. */
export function assertVarsResolved(missing: VarProblem[], invalid: VarProblem[] = []): void {
  if (missing.length > 0) {
    const byName = new Map<string, VarProblem[]>();
    for (const m of missing) byName.set(m.name, [...(byName.get(m.name) ?? []), m]);
    const lines = [...byName].map(([name, uses]) => {
      const at = uses.map((u) => `${u.file}:${u.line}`).join(', ');
      const why = uses.find((u) => u.problem)?.problem;
      return `  ((${name})) used at ${at}${why ? ` (${why})` : ''}`;
    });
    const first = missing[0]!;
    const n = byName.size;
    throw userError('var_missing', `${n} var${n === 1 ? ' is' : 's are'} not set:\n${lines.join('\n')}`, {
      hint: 'pass --var NAME=VALUE or --vars-file FILE',
      location: { file: first.file, line: first.line, column: first.column },
    });
  }
  if (invalid.length > 0) {
    const first = invalid[0]!;
    throw userError('var_invalid', invalid.map((i) => `${i.file}:${i.line}:${i.column}: ${i.problem}`).join('\n'), {
      hint: 'use a map or list var only as the whole value (`key: ((name))`), or refer to one of its keys: ((name.key))',
      location: { file: first.file, line: first.line, column: first.column },
    });
  }
}

/** Interpolates one file and throws if any var is missing. */
export function interpolate(y: YamlFile, store: VarStore): UsedVar[] {
  const r = interpolateDocument(y, store);
  assertVarsResolved(r.missing, r.invalid);
  return r.used;
}

/** Merges used-var lists, each name once. */
export function mergeUsedVars(...lists: UsedVar[][]): UsedVar[] {
  const seen = new Map<string, UsedVar>();
  for (const list of lists) for (const v of list) if (!seen.has(v.name)) seen.set(v.name, v);
  return [...seen.values()];
}

/**
 * Values shorter than this are not replaced in free text. A var whose value is `1`, `a` or
 * `on` would otherwise turn every digit or short word of a log line into `((name))`, making
 * logs unreadable while protecting nothing (a 2-character secret is not a secret). Such values
 * still never reach a plan: plans show property keys, not values.
 */
const MIN_REDACTED_LENGTH = 3;

/** Replaces every var value in `text` with `((name))`. */
export function makeRedactor(vars: UsedVar[]): (text: string) => string {
  const byValue = new Map<string, string>();
  for (const v of vars) {
    for (const leaf of leaves(v.value)) {
      for (const form of textForms(leaf)) {
        if (form.length >= MIN_REDACTED_LENGTH && !byValue.has(form)) byValue.set(form, `((${v.name}))`);
      }
    }
  }
  if (byValue.size === 0) return (text) => text;
  // One alternation, longest first, scanned once: a longer value wins over a value it contains,
  // and a replacement already made is never rescanned (a var whose value is another var's
  // name must not mangle `((name))`).
  const values = [...byValue.keys()].sort((a, b) => b.length - a.length);
  const re = new RegExp(values.map(escapeRegExp).join('|'), 'g');
  return (text) => text.replace(re, (m) => byValue.get(m) ?? m);
}

function leaves(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (typeof value === 'number' || typeof value === 'bigint') return [String(value)];
  if (Array.isArray(value)) return value.flatMap(leaves);
  if (value !== null && typeof value === 'object') return Object.values(value).flatMap(leaves);
  // booleans and null: `true` in a log line is not a secret
  return [];
}

/** The value as is, and as it appears inside JSON (logs and `--json` escape newlines and quotes). */
function textForms(s: string): string[] {
  const json = JSON.stringify(s).slice(1, -1);
  return json === s ? [s] : [s, json];
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
