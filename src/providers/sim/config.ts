/** The sim cloud's properties in the cloud-config: latencies and injected faults. */
import { userError } from '../../errors.js';
import { didYouMean } from '../../manifest/suggest.js';

export interface SimConfig {
  createMs: number;
  deleteMs: number;
  stopMs: number;
  applyMs: number;
  startMs: number;
  /** a started job turns healthy this long after its start */
  healthyAfterMs: number;
  bootTimeoutMs: number;
  /** fraction of API calls answered with a throttling error */
  throttleRate: number;
  failCreate: { names: ReadonlySet<string>; rate: number };
  bootNever: ReadonlySet<string>;
  failHealth: ReadonlySet<string>;
  failHealthRate: number;
  persist: boolean;
}

type Kind = 'ms' | 'rate' | 'names' | 'names_or_rate' | 'boolean' | 'other';

const KEYS: Record<string, Kind> = {
  create_ms: 'ms',
  delete_ms: 'ms',
  stop_ms: 'ms',
  apply_ms: 'ms',
  start_ms: 'ms',
  healthy_after_ms: 'ms',
  boot_timeout_ms: 'ms',
  throttle_rate: 'rate',
  fail_create: 'names_or_rate',
  boot_never: 'names',
  fail_health: 'names',
  fail_health_rate: 'rate',
  persist: 'boolean',
  // read by the registry for every cloud, not by the sim itself
  rate_limit: 'other',
  rate_limit_burst: 'other',
  base_dir: 'other',
};

export const SIM_PROPERTIES: readonly string[] = Object.keys(KEYS);

const EXPECTED: Record<Kind, string> = {
  ms: 'a number of milliseconds, 0 or more',
  rate: 'a fraction between 0 and 1',
  names: 'a list of instance names like web/3',
  names_or_rate: 'a list of instance names like web/3, or a fraction between 0 and 1',
  boolean: 'true or false',
  other: '',
};

const isRate = (v: unknown): v is number => typeof v === 'number' && v >= 0 && v <= 1;
const isNames = (v: unknown): v is string[] => Array.isArray(v) && v.every((n) => typeof n === 'string');

export function parseSimProperties(cloud: string, properties: Record<string, unknown>): SimConfig {
  for (const [key, value] of Object.entries(properties)) {
    const kind = KEYS[key];
    if (kind === undefined) {
      throw userError('cloud_property_unknown', `cloud '${cloud}' (type sim): unknown property '${key}'${didYouMean(key, SIM_PROPERTIES)}`, {
        hint: `valid properties: ${SIM_PROPERTIES.join(', ')}`,
      });
    }
    const ok =
      kind === 'other' ||
      (kind === 'ms' && typeof value === 'number' && Number.isFinite(value) && value >= 0) ||
      (kind === 'rate' && isRate(value)) ||
      (kind === 'names' && isNames(value)) ||
      (kind === 'names_or_rate' && (isNames(value) || isRate(value))) ||
      (kind === 'boolean' && typeof value === 'boolean');
    if (!ok) {
      throw userError('cloud_property_invalid', `cloud '${cloud}' (type sim): ${key} must be ${EXPECTED[kind]}, got ${JSON.stringify(value)}`, {
        hint: `valid properties: ${SIM_PROPERTIES.join(', ')}`,
      });
    }
  }
  const ms = (key: string, dflt: number) => (properties[key] as number | undefined) ?? dflt;
  const rate = (key: string) => (properties[key] as number | undefined) ?? 0;
  const names = (key: string) => new Set((properties[key] as string[] | undefined) ?? []);
  const failCreate = properties.fail_create;
  return {
    createMs: ms('create_ms', 20),
    deleteMs: ms('delete_ms', 10),
    stopMs: ms('stop_ms', 5),
    applyMs: ms('apply_ms', 5),
    startMs: ms('start_ms', 5),
    healthyAfterMs: ms('healthy_after_ms', 0),
    bootTimeoutMs: ms('boot_timeout_ms', 30_000),
    throttleRate: rate('throttle_rate'),
    failCreate: typeof failCreate === 'number' ? { names: new Set(), rate: failCreate } : { names: new Set(failCreate as string[] | undefined), rate: 0 },
    bootNever: names('boot_never'),
    failHealth: names('fail_health'),
    failHealthRate: rate('fail_health_rate'),
    persist: (properties.persist as boolean | undefined) ?? true,
  };
}
