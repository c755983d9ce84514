/**
 * POSIX shell quoting for every remote command the director builds.
 *
 * Hand-written rather than a dependency: inside single quotes a POSIX shell treats every byte
 * literally except `'` itself, so wrapping in quotes and turning each `'` into `'\''` (close,
 * escaped quote, reopen) is correct for any string ($, `, \, newlines, globs all included).
 * Always quoting, even words that look safe, keeps the rule trivially checkable. Three lines
 * need no dependency.
 */
import { DirectorError } from '../errors.js';

export function shq(s: string): string {
  // exec() truncates its arguments at NUL, which would silently shorten the remote command.
  if (s.includes('\0')) throw new DirectorError('shell_nul_byte', 'internal', `cannot pass a NUL byte to a remote shell: ${JSON.stringify(s.slice(0, 80))}`);
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** Quotes each argument and joins them into one command line for `sh -c`. */
export function shJoin(args: readonly string[]): string {
  return args.map(shq).join(' ');
}
