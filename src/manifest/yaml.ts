/**
 * Reading YAML so that every value can be traced back to file:line:col. The loader keeps the
 * parsed Document (not plain JS) until validation is done, because error messages and
 * `((var))` substitution both need the nodes.
 */
import { readFileSync } from 'node:fs';
import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { userError } from '../errors.js';

export type YamlPath = ReadonlyArray<string | number>;

export interface YamlFile {
  /** the path as the user gave it: messages show this, so they match what was typed */
  file: string;
  text: string;
  doc: Document;
  lineCounter: LineCounter;
  /**
   * Nodes whose value came from a var, with the text to show instead of the value (`((name))`,
   * or the original string for inline use). Filled by interpolation; read by error formatting.
   */
  varOrigins: Map<Node, string>;
}

export interface Position {
  line: number;
  column: number;
}

export interface ReadYamlOptions {
  /** what the file is, for messages: "manifest", "cloud-config", "vars file" */
  what?: string;
  hint?: string;
  /**
   * Leave the offending source line out of syntax errors. Vars files hold secrets, and the
   * yaml library's own messages quote the line.
   */
  secret?: boolean;
}

export function readYamlFile(file: string, opts: ReadYamlOptions = {}): YamlFile {
  const what = opts.what ?? 'file';
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EISDIR') {
      throw userError('file_not_found', `${what} ${file} ${code === 'ENOENT' ? 'does not exist' : 'is a directory, not a YAML file'}`, {
        hint: opts.hint ?? `check the path; relative paths are resolved from ${process.cwd()}`,
        location: { file },
        cause: e,
      });
    }
    throw userError('file_unreadable', `cannot read ${what} ${file}: ${(e as Error).message}`, {
      hint: 'check the file permissions',
      location: { file },
      cause: e,
    });
  }
  return parseYaml(text, file, opts);
}

export function parseYaml(text: string, file: string, opts: ReadYamlOptions = {}): YamlFile {
  const lineCounter = new LineCounter();
  // YAML 1.2 (the library default) so `no`/`on` stay strings and `0755` is not octal; the
  // YAML 1.1 habits that matter (`50_000`) are accepted by the schema where a number is expected.
  // Merge keys (`<<: *defaults`) are on because BOSH manifests written for Ruby's parser use them.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, merge: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const lines = text.split('\n');
    const issues = doc.errors.map((err) => {
      const pos = toPosition(lineCounter, err.pos[0]);
      let msg = `${file}:${pos.line}:${pos.column}: ${err.message}`;
      if (!opts.secret) {
        const src = lines[pos.line - 1];
        if (src !== undefined && src.trim() !== '') msg += `\n    ${src}\n    ${' '.repeat(pos.column - 1)}^`;
      }
      return { pos, msg };
    });
    const first = issues[0]!.pos;
    throw userError('manifest_yaml', issues.map((i) => i.msg).join('\n'), {
      hint: `fix the YAML syntax in ${file}${opts.what ? ` (${opts.what})` : ''}`,
      location: { file, line: first.line, column: first.column },
    });
  }
  return { file, text, doc, lineCounter, varOrigins: new Map() };
}

export function toPosition(lc: LineCounter, offset: number): Position {
  const p = lc.linePos(offset);
  return { line: p.line, column: p.col };
}

export interface Located {
  line: number;
  column: number;
  /** the nearest node on the path, which is the node itself when it exists */
  node: Node | undefined;
  /** set when the value at the path (or a collection it sits in) was substituted from a var */
  varText: string | undefined;
}

/**
 * Maps a path (zod's, or ours) to a position. Values that came from a var have no range, and
 * missing keys have no node at all; both fall back to the nearest ancestor that has one, and a
 * map entry falls back to its key, which is on the same line the user wrote.
 *
 * `atKey`: point at the last segment's key rather than its value (unknown-key messages).
 */
export function locate(y: YamlFile, path: YamlPath, atKey = false): Located {
  const { doc } = y;
  let node: unknown = doc.contents;
  let best: Node | undefined = hasRange(node) ? node : undefined;
  let bestRangeStart: number | undefined = best?.range?.[0];
  let varText = node ? y.varOrigins.get(node as Node) : undefined;
  let reached: Node | undefined = node as Node | undefined;
  for (let i = 0; i < path.length; i++) {
    const seg = path[i]!;
    const last = i === path.length - 1;
    if (isAlias(node)) node = node.resolve(doc);
    let next: unknown;
    let keyNode: unknown;
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && keyMatches(p.key, seg));
      if (pair) {
        keyNode = pair.key;
        next = pair.value;
      }
    } else if (isSeq(node) && typeof seg === 'number') {
      next = node.items[seg];
    }
    if (keyNode === undefined && next === undefined) break;
    if (last && atKey && hasRange(keyNode)) {
      best = keyNode;
      bestRangeStart = keyNode.range![0];
      reached = keyNode;
      break;
    }
    if (isAlias(next)) next = next.resolve(doc) ?? next;
    const origin = next ? y.varOrigins.get(next as Node) : undefined;
    if (origin !== undefined) varText = origin;
    if (hasRange(next)) {
      best = next;
      bestRangeStart = next.range![0];
    } else if (hasRange(keyNode)) {
      best = keyNode;
      bestRangeStart = keyNode.range![0];
    }
    node = next;
    reached = next as Node | undefined;
  }
  const pos = bestRangeStart === undefined ? { line: 1, column: 1 } : toPosition(y.lineCounter, bestRangeStart);
  return { ...pos, node: reached ?? best, varText };
}

function hasRange(n: unknown): n is Node {
  return !!n && typeof n === 'object' && Array.isArray((n as Node).range);
}

function keyMatches(key: unknown, seg: string | number): boolean {
  if (isScalar(key)) return key.value === seg || String(key.value) === String(seg);
  return key === seg;
}

/** The scalar as written, so `version: 621.740` stays "621.740" instead of the float 621.74. */
export function scalarSourceText(node: unknown): string | undefined {
  if (!isScalar(node)) return undefined;
  if (typeof node.value === 'string') return node.value;
  if (typeof node.source === 'string' && node.source !== '') return node.source;
  if (node.value === null || node.value === undefined) return undefined;
  return String(node.value);
}

/** "instance_groups[0].jobs[1].name" */
export function formatPath(path: YamlPath): string {
  let s = '';
  for (const seg of path) {
    if (typeof seg === 'number') s += `[${seg}]`;
    // Keys such as `ctl.erb` or BOSH's dotted property names would read as two levels.
    else if (!/^[A-Za-z0-9_-]+$/.test(seg)) s += `[${JSON.stringify(seg)}]`;
    else s += s === '' ? seg : `.${seg}`;
  }
  return s === '' ? '(top level)' : s;
}
