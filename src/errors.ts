/**
 * Every error that reaches an operator carries a stable code, a class saying whose fault it is,
 * and a hint saying how to fix it. The CLI maps the class to an exit code in one place
 * (src/cli/exit-codes.ts) and shows stack traces only with --debug.
 */
export type ErrorClass = 'user' | 'infrastructure' | 'application' | 'internal';

export interface ErrorLocation {
  file?: string;
  line?: number;
  column?: number;
  /** dotted path of the offending field, e.g. `instance_groups[0].instances` */
  field?: string;
}

export class DirectorError extends Error {
  readonly code: string;
  readonly errorClass: ErrorClass;
  readonly hint?: string;
  readonly location?: ErrorLocation;

  constructor(
    code: string,
    errorClass: ErrorClass,
    message: string,
    opts: { hint?: string; location?: ErrorLocation; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'DirectorError';
    this.code = code;
    this.errorClass = errorClass;
    this.hint = opts.hint;
    this.location = opts.location;
  }
}

export const userError = (code: string, message: string, opts: { hint?: string; location?: ErrorLocation; cause?: unknown } = {}) =>
  new DirectorError(code, 'user', message, opts);

export const infraError = (code: string, message: string, opts: { hint?: string; cause?: unknown } = {}) =>
  new DirectorError(code, 'infrastructure', message, opts);

export const appError = (code: string, message: string, opts: { hint?: string; cause?: unknown } = {}) =>
  new DirectorError(code, 'application', message, opts);

export function isDirectorError(e: unknown): e is DirectorError {
  return e instanceof DirectorError;
}

/** `file:line:col` prefix for messages about input files. */
export function formatLocation(loc: ErrorLocation | undefined): string {
  if (!loc?.file) return '';
  let s = loc.file;
  if (loc.line !== undefined) s += `:${loc.line}`;
  if (loc.line !== undefined && loc.column !== undefined) s += `:${loc.column}`;
  return s;
}
