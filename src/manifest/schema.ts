/**
 * The YAML shapes users write (BOSH's snake_case names and forms) and their normalisation into
 * the camelCase values of types.ts. Validation collects every problem of a file, including
 * cross-references (unknown release, az, vm_type) and unknown keys, so one run shows them all,
 * each with the file:line:col it comes from.
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { isDirectorError, userError, type ErrorLocation } from '../errors.js';
import { didYouMean, listOrNone } from './suggest.js';
import type {
  AzConfig,
  CloudConfig,
  CloudDef,
  Count,
  HealthCheckDef,
  InstanceGroup,
  JobSpec,
  Manifest,
  ReleaseSpec,
  UpdatePolicy,
  VmType,
  WatchTime,
} from './types.js';
import { formatPath, locate, scalarSourceText, type Located, type YamlFile, type YamlPath } from './yaml.js';

// ---------------------------------------------------------------------------------------------
// Issues

export interface SchemaIssue {
  path: YamlPath;
  /**
   * A function gets the offending value as it may be shown: `'z3'`, or `((azs))` when it came
   * from a var (values of vars are never printed).
   */
  message: string | ((shown: string, fromVar: boolean) => string);
  /** point at the key rather than the value (unknown keys) */
  atKey?: boolean;
  /** append ", got <value>" */
  showValue?: boolean;
  hint?: string;
  /** replaces `hint` when the value came from a var */
  varHint?: string;
}

/** One problem, located and worded. */
export interface FileIssue {
  file: string;
  line: number;
  column: number;
  field: string;
  /** `<file>:<line>:<col>: <field>: <problem>` */
  text: string;
  hint?: string;
}

export interface Checked<T> {
  /** undefined when there are issues */
  value: T | undefined;
  issues: FileIssue[];
  warnings: string[];
}

export type Redact = (text: string) => string;

export interface CheckOptions {
  /**
   * Turns var values back into `((name))` (see makeRedactor). Messages never show a var-sourced
   * value directly; this catches the indirect ways, such as a list of valid names that came from vars.
   */
  redact?: Redact;
}

/** Custom zod issues carry these params so the formatter can add the value and a hint. */
interface IssueParams {
  showValue?: boolean;
  hint?: string;
  varHint?: string;
}

type Ctx = z.core.$RefinementCtx<unknown>;

function fail(ctx: Ctx, input: unknown, message: string, params: IssueParams = {}): never {
  ctx.issues.push({ code: 'custom', message, input, params: { showValue: true, ...params } });
  return z.NEVER;
}

// ---------------------------------------------------------------------------------------------
// Scalars

/** Names end up in VM names, paths and state keys: no slashes, no leading dot. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const NAME_RULE = 'must start with a letter or digit and contain only letters, digits, "_", "-" and "."';
const DEPLOYMENT_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_-]*$/;

const nameField = z.string().regex(NAME_RE, { error: NAME_RULE });

/** `null` (a key with nothing after it) means the same as leaving the key out. */
function opt<T extends z.ZodType>(schema: T) {
  return z.preprocess((v) => (v === null ? undefined : v), schema.optional());
}

const INT_RE = /^[+-]?\d+(?:_\d+)*$/;

/**
 * Integers as BOSH users write them: `3`, `"3"` (every `--var` value is a string) and the YAML 1.1
 * `50_000`, which YAML 1.2 reads as a string.
 */
export function parseIntLike(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) ? v : undefined;
  if (typeof v === 'string' && INT_RE.test(v.trim())) {
    const n = Number(v.trim().replace(/_/g, ''));
    return Number.isSafeInteger(n) ? n : undefined;
  }
  return undefined;
}

function present(ctx: Ctx, v: unknown): boolean {
  if (v === undefined || v === null) {
    fail(ctx, v, v === undefined ? 'is required' : 'is empty', { showValue: false });
    return false;
  }
  return true;
}

function intField(min: number, max?: number) {
  const range = max === undefined ? `>= ${min}` : `from ${min} to ${max}`;
  return z.unknown().transform((v, ctx): number => {
    if (!present(ctx, v)) return z.NEVER;
    const n = parseIntLike(v);
    if (n === undefined) return fail(ctx, v, `must be a whole number ${range}`);
    if (n < min || (max !== undefined && n > max)) return fail(ctx, v, `must be ${range}`);
    return n;
  });
}

const PCT_RE = /^\s*(\d+)\s*%\s*$/;

/** `2`, `"2"` or `"25%"` */
function countField(min: number) {
  return z.unknown().transform((v, ctx): Count => {
    if (!present(ctx, v)) return z.NEVER;
    const pct = typeof v === 'string' ? PCT_RE.exec(v) : null;
    if (pct) {
      const n = Number(pct[1]);
      if (n < min || n > 100) return fail(ctx, v, `must be a percentage from ${min}% to 100%`);
      return { kind: 'pct', value: n };
    }
    const n = parseIntLike(v);
    if (n === undefined) return fail(ctx, v, `must be a whole number >= ${min} or a percentage like "25%"`);
    if (n < min) return fail(ctx, v, `must be >= ${min}`);
    return { kind: 'abs', value: n };
  });
}

const RANGE_RE = /^\s*(\d[\d_]*)\s*-\s*(\d[\d_]*)\s*$/;

/**
 * `"1000-30000"`: healthy no sooner than LOW ms, failed after HIGH ms. A single number N means
 * what it means in BOSH: wait N ms, then check once (LOW = HIGH = N).
 */
const watchTimeField = z.unknown().transform((v, ctx): WatchTime => {
  if (!present(ctx, v)) return z.NEVER;
  const range = typeof v === 'string' ? RANGE_RE.exec(v) : null;
  if (range) {
    const minMs = parseIntLike(range[1]);
    const maxMs = parseIntLike(range[2]);
    if (minMs === undefined || maxMs === undefined) return fail(ctx, v, 'must be milliseconds as LOW-HIGH');
    if (minMs > maxMs) return fail(ctx, v, 'LOW must not be greater than HIGH in LOW-HIGH');
    return { minMs, maxMs };
  }
  const n = parseIntLike(v);
  if (n === undefined || n < 0) {
    return fail(ctx, v, 'must be milliseconds: a range "LOW-HIGH" like "1000-30000", or a single number');
  }
  return { minMs: n, maxMs: n };
});

/** A real YAML boolean: `"false"` is a non-empty string and reads as true in too many tools. */
const boolField = z.unknown().transform((v, ctx): boolean => {
  if (!present(ctx, v)) return z.NEVER;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string') {
    const s = v.trim().toLowerCase();
    const meant = ['true', 'yes', 'on', 'y'].includes(s) ? 'true' : ['false', 'no', 'off', 'n'].includes(s) ? 'false' : undefined;
    if (meant !== undefined) {
      return fail(ctx, v, 'must be a boolean, not a string', {
        hint: `write ${meant} without quotes`,
        varHint: '--var values are always strings; set this var in a --vars-file as a YAML boolean (true or false, no quotes)',
      });
    }
  }
  return fail(ctx, v, 'must be true or false');
});

const DURATION_RE = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$/;
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** ms as a number, or `"90s"`, `"10m"`, `"1m30s"` */
const durationField = z.unknown().transform((v, ctx): number => {
  if (!present(ctx, v)) return z.NEVER;
  let ms = parseIntLike(v);
  if (ms === undefined && typeof v === 'string' && DURATION_RE.test(v.trim())) {
    ms = 0;
    for (const m of v.trim().matchAll(DURATION_PART)) ms += Number(m[1]) * UNIT_MS[m[2]!]!;
    ms = Math.round(ms);
  }
  if (ms === undefined) return fail(ctx, v, 'must be milliseconds or a duration like "90s", "10m", "1h"');
  if (ms <= 0) return fail(ctx, v, 'must be greater than 0');
  return ms;
});

/** Keeps the text; the normaliser replaces it with the scalar's source (`621.740`, not 621.74). */
const versionField = z.unknown().transform((v, ctx): string => {
  if (typeof v === 'string' && v.trim() !== '') return v;
  if (typeof v === 'number') return String(v);
  return fail(ctx, v, 'must be a version like "1.2.3"');
});

const propertiesField = opt(z.record(z.string(), z.unknown()));

// ---------------------------------------------------------------------------------------------
// Manifest

const UpdateYaml = z.object({
  canaries: opt(countField(0)),
  max_in_flight: opt(countField(1)),
  canary_watch_time: opt(watchTimeField),
  update_watch_time: opt(watchTimeField),
  serial: opt(boolField),
  vm_strategy: opt(z.enum(['delete-create', 'create-swap-delete'])),
  auto_rollback: opt(boolField),
  max_failures: opt(intField(0)),
  progress_deadline: opt(durationField),
});
/** an `update` block as written: only the keys the user gave */
export type PartialUpdate = z.output<typeof UpdateYaml>;

const ReleaseYaml = z.object({
  name: nameField,
  path: z.string().min(1),
  version: opt(versionField),
});

const JobYaml = z.object({
  name: nameField,
  release: z.string().min(1),
  properties: propertiesField,
});

/** Health check names are file names under canaries/: no path separators. */
const healthName = z.string().regex(NAME_RE, { error: `must be the name of a file in canaries/ without .yml; ${NAME_RULE}` });

const InstanceGroupYaml = z.object({
  name: nameField,
  instances: intField(0),
  azs: z.array(z.string().min(1)).min(1),
  vm_type: z.string().min(1),
  jobs: z.array(JobYaml),
  health: opt(z.array(healthName)),
  update: opt(UpdateYaml),
});

const RepairYaml = z.object({
  meltdown_min_instances: opt(intField(1)),
  meltdown_min_percent: opt(intField(0, 100)),
});

const ManifestYaml = z.object({
  name: z.string().regex(DEPLOYMENT_NAME_RE, {
    error: 'must start with a letter or digit and contain only letters, digits, "_" and "-"',
  }),
  releases: z.array(ReleaseYaml),
  update: opt(UpdateYaml),
  instance_groups: z.array(InstanceGroupYaml),
  repair: opt(RepairYaml),
});

/** BOSH's resurrector meltdown default: at least 5 instances and at least 20% of them down. */
export const DEFAULT_REPAIR = { meltdownMinInstances: 5, meltdownMinPercent: 20 };

export const DEFAULT_UPDATE: UpdatePolicy = {
  canaries: { kind: 'abs', value: 1 },
  maxInFlight: { kind: 'abs', value: 1 },
  canaryWatchTime: { minMs: 0, maxMs: 30_000 },
  updateWatchTime: { minMs: 0, maxMs: 30_000 },
  serial: true,
  vmStrategy: 'delete-create',
  autoRollback: true,
  maxFailures: 0,
  progressDeadlineMs: undefined,
};

/** Applies the keys present in `u` over `base`, one by one (BOSH's instance-group override). */
export function applyUpdate(base: UpdatePolicy, u: PartialUpdate | undefined): UpdatePolicy {
  if (!u) return { ...base };
  return {
    canaries: u.canaries ?? base.canaries,
    maxInFlight: u.max_in_flight ?? base.maxInFlight,
    canaryWatchTime: u.canary_watch_time ?? base.canaryWatchTime,
    updateWatchTime: u.update_watch_time ?? base.updateWatchTime,
    serial: u.serial ?? base.serial,
    vmStrategy: u.vm_strategy ?? base.vmStrategy,
    autoRollback: u.auto_rollback ?? base.autoRollback,
    maxFailures: u.max_failures ?? base.maxFailures,
    progressDeadlineMs: u.progress_deadline ?? base.progressDeadlineMs,
  };
}

// ---------------------------------------------------------------------------------------------
// Keys

interface KeySpec {
  known: readonly string[];
  /** BOSH keys we accept and ignore, with a warning */
  unsupported?: readonly string[];
  /** accepted and ignored without a warning (metadata BOSH tooling writes) */
  ignored?: readonly string[];
  /** keys that mean something elsewhere (BOSH's older names, another check type): what to say instead of a did-you-mean */
  renamed?: Readonly<Record<string, string>>;
  nested?: Readonly<Record<string, { map?: KeySpec; each?: KeySpec }>>;
}

const UPDATE_KEYS: KeySpec = {
  known: Object.keys(UpdateYaml.shape),
  unsupported: ['initial_deploy_az_update_strategy'],
};

const MANIFEST_KEYS: KeySpec = {
  known: Object.keys(ManifestYaml.shape),
  unsupported: ['stemcells', 'variables', 'features', 'tags', 'addons', 'properties', 'director_uuid'],
  renamed: { jobs: "BOSH v1's top-level 'jobs' is 'instance_groups'" },
  nested: {
    releases: {
      each: { known: Object.keys(ReleaseYaml.shape), unsupported: ['url', 'sha1', 'stemcell', 'exported_from'] },
    },
    update: { map: UPDATE_KEYS },
    repair: { map: { known: Object.keys(RepairYaml.shape) } },
    instance_groups: {
      each: {
        known: Object.keys(InstanceGroupYaml.shape),
        unsupported: [
          'networks',
          'stemcell',
          'persistent_disk',
          'persistent_disk_type',
          'vm_extensions',
          'env',
          'lifecycle',
          'migrated_from',
          'properties',
        ],
        renamed: { templates: "BOSH v1's 'templates' is 'jobs'", vm_resources: "use 'vm_type' to name an entry of the cloud-config's vm_types" },
        nested: {
          update: { map: UPDATE_KEYS },
          jobs: {
            each: {
              known: Object.keys(JobYaml.shape),
              unsupported: ['consumes', 'provides', 'custom_provider_definitions'],
            },
          },
        },
      },
    },
  },
};

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function checkKeys(y: YamlFile, raw: unknown, at: YamlPath, spec: KeySpec, issues: SchemaIssue[], warnings: string[]): void {
  if (!isRecord(raw)) return;
  for (const key of Object.keys(raw)) {
    const keyPath = [...at, key];
    if (spec.known.includes(key)) {
      const nested = spec.nested?.[key];
      const value = raw[key];
      if (nested?.map) checkKeys(y, value, keyPath, nested.map, issues, warnings);
      if (nested?.each && Array.isArray(value)) {
        value.forEach((item, i) => checkKeys(y, item, [...keyPath, i], nested.each!, issues, warnings));
      }
    } else if (spec.unsupported?.includes(key)) {
      const loc = locate(y, keyPath, true);
      warnings.push(`${y.file}:${loc.line}: '${key}' is not supported yet and is ignored`);
    } else if (spec.ignored?.includes(key)) {
      continue;
    } else {
      const renamed = spec.renamed?.[key];
      const suggestion = didYouMean(key, spec.known);
      issues.push({
        path: keyPath,
        atKey: true,
        message: `unknown key '${key}'` + (renamed ? `; ${renamed}` : suggestion || `; valid keys: ${spec.known.join(', ')}`),
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Formatting

function rawAt(raw: unknown, p: YamlPath): unknown {
  let cur = raw;
  for (const seg of p) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string | number, unknown>)[seg];
  }
  return cur;
}

function truncate(s: string, n = 60): string {
  return s.length > n ? `${s.slice(0, n)}…` : s;
}

/** How to name a value in a message; a var-sourced value is shown as the reference. */
function showValue(raw: unknown, loc: Located): string {
  if (loc.varText !== undefined) return loc.varText;
  if (raw === undefined || raw === null) return 'nothing';
  if (typeof raw === 'string') return `'${truncate(raw)}'`;
  if (typeof raw === 'number' || typeof raw === 'boolean') return scalarSourceText(loc.node) ?? String(raw);
  if (Array.isArray(raw)) return 'a list';
  return 'a map';
}

const TYPE_NAMES: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  int: 'a whole number',
  boolean: 'true or false',
  array: 'a list',
  object: 'a map',
  record: 'a map',
};

function fromZod(issue: z.core.$ZodIssue, raw: unknown): SchemaIssue {
  const p = issue.path.filter((s): s is string | number => typeof s !== 'symbol');
  const value = rawAt(raw, p);
  switch (issue.code) {
    case 'invalid_type': {
      if (value === undefined) return { path: p, message: 'is required' };
      const expected = TYPE_NAMES[issue.expected] ?? issue.expected;
      if (value === null) return { path: p, message: `is empty; expected ${expected}` };
      return { path: p, message: `must be ${expected}`, showValue: true };
    }
    case 'too_small':
      if (issue.origin === 'array') {
        return { path: p, message: `must list at least ${String(issue.minimum)} entr${issue.minimum === 1 ? 'y' : 'ies'}` };
      }
      if (issue.origin === 'string') return { path: p, message: 'must not be empty' };
      return { path: p, message: issue.message, showValue: true };
    case 'invalid_value':
      return { path: p, message: `must be one of: ${issue.values.map(String).join(', ')}`, showValue: true };
    case 'invalid_key': {
      const inner = issue.issues[0];
      const why = inner ? fromZod(inner, undefined).message : issue.message;
      return { path: p, atKey: true, message: `the key ${typeof why === 'string' ? why : 'is invalid'}` };
    }
    case 'custom': {
      const params = (issue.params ?? {}) as IssueParams;
      return { path: p, message: issue.message, showValue: params.showValue, hint: params.hint, varHint: params.varHint };
    }
    default:
      return { path: p, message: issue.message, showValue: true };
  }
}

/** Stands for the offending value while the rest of a message is redacted. */
const SHOWN = '\u0000shown\u0000';

function formatIssues(y: YamlFile, raw: unknown, issues: SchemaIssue[], redact: Redact): FileIssue[] {
  const out = issues.map((issue) => {
    const loc = locate(y, issue.path, issue.atKey);
    const fromVar = loc.varText !== undefined;
    const shown = showValue(rawAt(raw, issue.path), loc);
    // The offending value is already safe to show (a var-sourced one is shown as `((name))`), so
    // only the rest is redacted: lists of valid names and the like can hold a var's value, and a
    // literal that merely equals some var's value is still shown as the user wrote it.
    const text = typeof issue.message === 'string' ? issue.message : issue.message(SHOWN, fromVar);
    let problem = redact(text).split(SHOWN).join(shown);
    if (issue.showValue) problem += `, got ${shown}`;
    const field = formatPath(issue.path);
    const hint = fromVar && issue.varHint ? issue.varHint : issue.hint;
    return { file: y.file, line: loc.line, column: loc.column, field, text: `${y.file}:${loc.line}:${loc.column}: ${field}: ${problem}`, hint };
  });
  // Top to bottom, as the user reads the file; the sort is stable for issues on one line.
  return out.sort((a, b) => a.line - b.line || a.column - b.column);
}

export interface AssertValidOptions {
  code?: string;
  hint?: string;
}

/** Throws one error listing the issues of all the given results, if there are any. */
export function assertValid(results: ReadonlyArray<Checked<unknown>>, opts: AssertValidOptions = {}): void {
  const issues = results.flatMap((r) => r.issues);
  if (issues.length === 0) return;
  const hints = [...new Set(issues.map((i) => i.hint).filter((h): h is string => !!h))];
  const first = issues[0]!;
  const location: ErrorLocation = { file: first.file, line: first.line, column: first.column, field: first.field };
  throw userError(opts.code ?? 'manifest_invalid', issues.map((i) => i.text).join('\n'), {
    hint: [...hints, opts.hint ?? 'fix the fields listed above and run the command again'].join('; '),
    location,
  });
}

function result<T>(
  y: YamlFile,
  raw: unknown,
  issues: SchemaIssue[],
  warnings: string[],
  make: () => T,
  redact: Redact = (s) => s,
): Checked<T> {
  const w = warnings.map(redact);
  if (issues.length > 0) return { value: undefined, issues: formatIssues(y, raw, issues, redact), warnings: w };
  return { value: make(), issues: [], warnings: w };
}

function rawOf(y: YamlFile): unknown {
  return y.doc.toJS({ maxAliasCount: 10_000 });
}

function parse<T extends z.ZodType>(schema: T, raw: unknown, issues: SchemaIssue[]): z.output<T> | undefined {
  const r = schema.safeParse(raw);
  if (r.success) return r.data;
  if (raw === null || raw === undefined) {
    issues.push({ path: [], message: 'the file is empty' });
  } else {
    issues.push(...r.error.issues.map((i) => fromZod(i, raw)));
  }
  return undefined;
}

/** Reports the second and later uses of a name in a list of named entries. */
function checkUnique(list: unknown, listPath: YamlPath, what: string, issues: SchemaIssue[]): string[] {
  const names: string[] = [];
  const firstAt = new Map<string, number>();
  if (!Array.isArray(list)) return names;
  list.forEach((item, i) => {
    const name = isRecord(item) ? item.name : undefined;
    if (typeof name !== 'string') return;
    const prev = firstAt.get(name);
    if (prev !== undefined) {
      issues.push({
        path: [...listPath, i, 'name'],
        message: (shown) => `duplicate ${what} name ${shown}; also used by ${formatPath([...listPath, prev])}`,
      });
    } else {
      firstAt.set(name, i);
      names.push(name);
    }
  });
  return names;
}

/**
 * "unknown az 'z3'; azs in cloud-config.yml: z1, z2; did you mean 'z1'?". No suggestion for a
 * var's value: how close it is to a valid name says something about the value.
 */
function unknownName(what: string, value: string, listName: string, candidates: string[]) {
  return (shown: string, fromVar: boolean) =>
    `unknown ${what} ${shown}; ${listName}: ${listOrNone(candidates)}${fromVar ? '' : didYouMean(value, candidates)}`;
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

// ---------------------------------------------------------------------------------------------
// Cloud-config

const CLOUD_TYPES = ['local', 'aws', 'gcp', 'static', 'sim'] as const;

const AzYaml = z.object({ name: nameField, cloud: z.string().min(1), cloud_properties: propertiesField });
const CloudYaml = z.looseObject({ name: nameField, type: z.enum(CLOUD_TYPES) });
const VmTypeYaml = z.object({ name: nameField, cloud_properties: propertiesField });
const CloudConfigYaml = z.object({
  azs: z.array(AzYaml),
  clouds: z.array(CloudYaml),
  vm_types: z.array(VmTypeYaml),
});

const CLOUD_CONFIG_KEYS: KeySpec = {
  known: Object.keys(CloudConfigYaml.shape),
  unsupported: ['networks', 'disk_types', 'compilation', 'vm_extensions'],
  nested: {
    azs: {
      each: {
        known: Object.keys(AzYaml.shape),
        renamed: { cpi: "BOSH's 'cpi' is 'cloud' here: the name of an entry of clouds" },
      },
    },
    vm_types: { each: { known: Object.keys(VmTypeYaml.shape) } },
  },
};

export function checkCloudConfig(y: YamlFile, opts: CheckOptions = {}): Checked<CloudConfig> {
  const raw = rawOf(y);
  const issues: SchemaIssue[] = [];
  const warnings: string[] = [];
  checkKeys(y, raw, [], CLOUD_CONFIG_KEYS, issues, warnings);
  const data = parse(CloudConfigYaml, raw, issues);

  const r = isRecord(raw) ? raw : {};
  checkUnique(r.azs, ['azs'], 'az', issues);
  const cloudNames = checkUnique(r.clouds, ['clouds'], 'cloud', issues);
  checkUnique(r.vm_types, ['vm_types'], 'vm_type', issues);
  if (Array.isArray(r.azs)) {
    r.azs.forEach((az, i) => {
      const cloud = isRecord(az) ? az.cloud : undefined;
      if (typeof cloud !== 'string' || cloud === '' || cloudNames.includes(cloud)) return;
      issues.push({
        path: ['azs', i, 'cloud'],
        message: unknownName('cloud', cloud, 'clouds in this cloud-config', cloudNames),
      });
    });
  }

  return result(y, raw, issues, warnings, () => {
    const d = data!;
    const azs: AzConfig[] = d.azs.map((a) => ({ name: a.name, cloud: a.cloud, cloudProperties: a.cloud_properties ?? {} }));
    const clouds: CloudDef[] = d.clouds.map((c) => {
      const { name, type, ...properties } = c;
      return { name, type, properties };
    });
    const vmTypes: VmType[] = d.vm_types.map((v) => ({ name: v.name, cloudProperties: v.cloud_properties ?? {} }));
    return { azs, clouds, vmTypes };
  }, opts.redact);
}

// ---------------------------------------------------------------------------------------------
// Deployment manifest

export interface ManifestContext extends CheckOptions {
  /** directory that release paths are relative to: the manifest's */
  baseDir: string;
  /** undefined when the cloud-config itself is invalid: az and vm_type checks are skipped */
  cloudConfig?: CloudConfig;
  /** named in messages about azs and vm_types */
  cloudConfigFile?: string;
  /** reads release.yml of a release directory, so job names can be checked against it */
  readRelease?: (releaseDir: string) => ReleaseSpec;
}

export interface CheckedManifest extends Checked<Manifest> {
  /** release specs read while checking, by manifest release name */
  releaseSpecs: Map<string, ReleaseSpec>;
}

export function checkManifest(y: YamlFile, ctx: ManifestContext): CheckedManifest {
  const raw = rawOf(y);
  const issues: SchemaIssue[] = [];
  const warnings: string[] = [];
  checkKeys(y, raw, [], MANIFEST_KEYS, issues, warnings);
  const data = parse(ManifestYaml, raw, issues);

  const r = isRecord(raw) ? raw : {};
  const releaseSpecs = checkReleases(y, r.releases, ctx, issues, warnings);
  const releaseNames = checkUnique(r.releases, ['releases'], 'release', issues);
  checkUnique(r.instance_groups, ['instance_groups'], 'instance group', issues);
  if (Array.isArray(r.instance_groups)) {
    r.instance_groups.forEach((ig, i) => {
      if (isRecord(ig)) checkInstanceGroupRefs(ig, ['instance_groups', i], releaseNames, releaseSpecs, ctx, issues);
    });
  }

  const checked = result(y, raw, issues, warnings, () => {
    const d = data!;
    const update = applyUpdate(DEFAULT_UPDATE, d.update);
    return {
      name: d.name,
      releases: d.releases.map((rel, i) => ({
        name: rel.name,
        path: path.resolve(ctx.baseDir, rel.path),
        ...(rel.version === undefined
          ? {}
          : { version: scalarSourceText(locate(y, ['releases', i, 'version']).node) ?? rel.version }),
      })),
      update,
      repair: {
        meltdownMinInstances: d.repair?.meltdown_min_instances ?? DEFAULT_REPAIR.meltdownMinInstances,
        meltdownMinPercent: d.repair?.meltdown_min_percent ?? DEFAULT_REPAIR.meltdownMinPercent,
      },
      instanceGroups: d.instance_groups.map(
        (ig): InstanceGroup => ({
          name: ig.name,
          instances: ig.instances,
          azs: ig.azs,
          vmType: ig.vm_type,
          jobs: ig.jobs.map((j) => ({ name: j.name, release: j.release, properties: j.properties ?? {} })),
          health: ig.health ?? [],
          update: applyUpdate(update, ig.update),
        }),
      ),
    };
  }, ctx.redact);
  return { ...checked, releaseSpecs };
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function checkReleases(
  y: YamlFile,
  releases: unknown,
  ctx: ManifestContext,
  issues: SchemaIssue[],
  warnings: string[],
): Map<string, ReleaseSpec> {
  const specs = new Map<string, ReleaseSpec>();
  if (!Array.isArray(releases)) return specs;
  releases.forEach((rel, i) => {
    if (!isRecord(rel) || typeof rel.path !== 'string' || rel.path === '') return;
    const at: YamlPath = ['releases', i, 'path'];
    const dir = path.resolve(ctx.baseDir, rel.path);
    // A var-sourced path is not printed resolved: that would print the var's value.
    const where = (shown: string, fromVar: boolean) => (fromVar ? shown : `${shown} (${dir})`);
    if (!isDir(dir)) {
      issues.push({
        path: at,
        message: (shown, fromVar) => `release directory ${where(shown, fromVar)} does not exist`,
        hint: `release paths are relative to the manifest's directory (${ctx.baseDir})`,
      });
      return;
    }
    if (!existsSync(path.join(dir, 'release.yml'))) {
      issues.push({ path: at, message: (shown, fromVar) => `release directory ${where(shown, fromVar)} has no release.yml` });
      return;
    }
    if (!ctx.readRelease) return;
    try {
      const spec = ctx.readRelease(dir);
      if (typeof rel.name === 'string') {
        specs.set(rel.name, spec);
        if (spec.name !== rel.name) {
          const loc = locate(y, ['releases', i, 'name']);
          warnings.push(`${y.file}:${loc.line}: release '${rel.name}' points at a release named '${spec.name}' (its release.yml)`);
        }
      }
    } catch (e) {
      if (!isDirectorError(e)) throw e;
      const lines = e.message.split('\n');
      const more = lines.length > 1 ? ` (and ${lines.length - 1} more)` : '';
      issues.push({ path: at, message: `release.yml is invalid: ${lines[0]}${more}` });
    }
  });
  return specs;
}

function checkInstanceGroupRefs(
  ig: Record<string, unknown>,
  at: YamlPath,
  releaseNames: string[],
  releaseSpecs: Map<string, ReleaseSpec>,
  ctx: ManifestContext,
  issues: SchemaIssue[],
): void {
  if (Array.isArray(ig.jobs)) {
    checkUnique(ig.jobs, [...at, 'jobs'], 'job', issues);
    ig.jobs.forEach((job, j) => {
      if (!isRecord(job)) return;
      const release = job.release;
      if (typeof release !== 'string' || release === '') return;
      if (!releaseNames.includes(release)) {
        issues.push({
          path: [...at, 'jobs', j, 'release'],
          message: unknownName('release', release, 'releases in this manifest', releaseNames),
        });
        return;
      }
      const spec = releaseSpecs.get(release);
      if (spec && typeof job.name === 'string' && !spec.jobs.includes(job.name)) {
        const name = job.name;
        issues.push({
          path: [...at, 'jobs', j, 'name'],
          message: unknownName('job', name, `jobs in release '${release}'`, spec.jobs),
        });
      }
    });
  }

  const cc = ctx.cloudConfig;
  if (!cc) return;
  const ccName = ctx.cloudConfigFile ?? 'the cloud-config';
  const azNames = cc.azs.map((a) => a.name);
  const seenAzs = new Set<string>();
  if (Array.isArray(ig.azs)) {
    ig.azs.forEach((az, k) => {
      if (typeof az !== 'string' || az === '') return;
      const p = [...at, 'azs', k];
      if (seenAzs.has(az)) {
        issues.push({ path: p, message: (shown) => `az ${shown} is listed twice` });
        return;
      }
      seenAzs.add(az);
      if (!azNames.includes(az)) {
        issues.push({
          path: p,
          message: unknownName('az', az, `azs in ${ccName}`, azNames),
        });
      }
    });
  }
  const vmTypeNames = cc.vmTypes.map((v) => v.name);
  const vmType = ig.vm_type;
  if (typeof vmType === 'string' && vmType !== '' && !vmTypeNames.includes(vmType)) {
    issues.push({
      path: [...at, 'vm_type'],
      message: unknownName('vm_type', vmType, `vm_types in ${ccName}`, vmTypeNames),
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Health checks, release.yml, spec.yml

const portField = z.unknown().transform((v, ctx): number | { property: string } => {
  if (!present(ctx, v)) return z.NEVER;
  if (isRecord(v)) {
    // Extra keys next to `property` are reported by the key check, not here.
    if (typeof v.property === 'string' && v.property !== '') return { property: v.property };
    return fail(ctx, v, 'must be a port number or {property: NAME} naming a job property that holds the port');
  }
  const n = parseIntLike(v);
  if (n === undefined || n < 1 || n > 65_535) return fail(ctx, v, 'must be a port from 1 to 65535, or {property: NAME}');
  return n;
});

const timeoutField = opt(intField(1));
const checkName = opt(z.string().regex(NAME_RE, { error: NAME_RULE }));

const HttpCheckYaml = z.object({
  name: checkName,
  type: z.literal('http'),
  port: portField,
  path: opt(z.string().regex(/^\//, { error: 'must start with "/"' })),
  expect_status: opt(intField(100, 599)),
  timeout_ms: timeoutField,
});
const TcpCheckYaml = z.object({ name: checkName, type: z.literal('tcp'), port: portField, timeout_ms: timeoutField });
const CommandCheckYaml = z.object({
  name: checkName,
  type: z.literal('command'),
  command: z.string().min(1),
  timeout_ms: timeoutField,
});
const CHECK_SCHEMAS = { http: HttpCheckYaml, tcp: TcpCheckYaml, command: CommandCheckYaml } as const;
const CHECK_TYPES = Object.keys(CHECK_SCHEMAS) as Array<keyof typeof CHECK_SCHEMAS>;
const ALL_CHECK_KEYS = [...new Set(Object.values(CHECK_SCHEMAS).flatMap((s) => Object.keys(s.shape)))];
const CheckYaml = z.discriminatedUnion('type', [HttpCheckYaml, TcpCheckYaml, CommandCheckYaml]);

const DEFAULT_CHECK_TIMEOUT_MS = 2000;

/** canaries/<name>.yml; `name` may be left out, and must match the file name if given. */
export function checkHealthCheck(y: YamlFile, fileName: string): Checked<HealthCheckDef> {
  const raw = rawOf(y);
  const issues: SchemaIssue[] = [];
  const warnings: string[] = [];
  let data: z.output<typeof CheckYaml> | undefined;
  const type = isRecord(raw) ? raw.type : undefined;
  if (isRecord(raw) && !(typeof type === 'string' && type in CHECK_SCHEMAS)) {
    issues.push({ path: ['type'], message: `must be one of: ${CHECK_TYPES.join(', ')}`, showValue: type !== undefined });
  } else {
    if (isRecord(raw)) {
      const known = Object.keys(CHECK_SCHEMAS[type as keyof typeof CHECK_SCHEMAS].shape);
      // A key of another check type gets that explanation rather than a did-you-mean.
      const renamed = Object.fromEntries(
        ALL_CHECK_KEYS.filter((k) => !known.includes(k)).map((k) => [
          k,
          `'${k}' applies to ${CHECK_TYPES.filter((t) => k in CHECK_SCHEMAS[t].shape).join('/')} checks only`,
        ]),
      );
      checkKeys(y, raw, [], { known, renamed }, issues, warnings);
      if (isRecord(raw.port)) checkKeys(y, raw.port, ['port'], { known: ['property'] }, issues, warnings);
    }
    data = parse(CheckYaml, raw, issues);
  }
  const name = isRecord(raw) ? raw.name : undefined;
  if (typeof name === 'string' && name !== fileName) {
    issues.push({ path: ['name'], message: (shown) => `name ${shown} does not match the file name '${fileName}.yml'` });
  }
  return result(y, raw, issues, warnings, (): HealthCheckDef => {
    const d = data!;
    const timeoutMs = d.timeout_ms ?? DEFAULT_CHECK_TIMEOUT_MS;
    switch (d.type) {
      case 'http':
        return { name: fileName, type: 'http', port: d.port, path: d.path ?? '/', expectStatus: d.expect_status ?? 200, timeoutMs };
      case 'tcp':
        return { name: fileName, type: 'tcp', port: d.port, timeoutMs };
      case 'command':
        return { name: fileName, type: 'command', command: d.command, timeoutMs };
    }
  });
}

const ReleaseSpecYaml = z.object({ name: nameField, jobs: z.array(nameField) });
const RELEASE_SPEC_KEYS: KeySpec = {
  known: Object.keys(ReleaseSpecYaml.shape),
  ignored: ['version', 'commit_hash', 'uncommitted_changes', 'packages', 'license', 'description'],
};

export function checkReleaseSpec(y: YamlFile): Checked<ReleaseSpec> {
  const raw = rawOf(y);
  const issues: SchemaIssue[] = [];
  const warnings: string[] = [];
  checkKeys(y, raw, [], RELEASE_SPEC_KEYS, issues, warnings);
  const data = parse(ReleaseSpecYaml, raw, issues);
  if (isRecord(raw)) {
    const seen = new Set<string>();
    strings(raw.jobs).forEach((job, i) => {
      if (seen.has(job)) issues.push({ path: ['jobs', i], message: (shown) => `job ${shown} is listed twice` });
      seen.add(job);
    });
  }
  return result(y, raw, issues, warnings, () => ({ name: data!.name, jobs: data!.jobs }));
}

/** A template path must stay inside the job: relative, no `..`. */
const relativePath = z.string().refine(
  (p) => p !== '' && !path.isAbsolute(p) && !p.split(/[\\/]/).includes('..'),
  { error: 'must be a relative path inside the job (no leading "/", no "..")' },
);

const PropertySpecYaml = opt(
  z.object({ description: opt(z.string()), default: z.unknown().optional(), example: z.unknown().optional() }),
);
const JobSpecYaml = z.object({
  name: nameField,
  templates: opt(z.record(relativePath, relativePath)),
  properties: opt(z.record(z.string(), PropertySpecYaml)),
});
const JOB_SPEC_KEYS: KeySpec = {
  known: Object.keys(JobSpecYaml.shape),
  ignored: ['packages', 'consumes', 'provides', 'description'],
};

export function checkJobSpec(y: YamlFile): Checked<JobSpec> {
  const raw = rawOf(y);
  const issues: SchemaIssue[] = [];
  const warnings: string[] = [];
  checkKeys(y, raw, [], JOB_SPEC_KEYS, issues, warnings);
  if (isRecord(raw) && isRecord(raw.properties)) {
    for (const [name, prop] of Object.entries(raw.properties)) {
      checkKeys(y, prop, ['properties', name], { known: ['description', 'default', 'example'] }, issues, warnings);
    }
  }
  const data = parse(JobSpecYaml, raw, issues);
  return result(y, raw, issues, warnings, () => {
    const d = data!;
    const properties: JobSpec['properties'] = {};
    for (const [name, prop] of Object.entries(d.properties ?? {})) {
      const p: { description?: string; default?: unknown } = {};
      if (prop?.description !== undefined) p.description = prop.description;
      // A `default:` written with nothing after it is a default of null, not "no default".
      if (prop && 'default' in prop) p.default = prop.default;
      properties[name] = p;
    }
    return { name: d.name, templates: d.templates ?? {}, properties };
  });
}

