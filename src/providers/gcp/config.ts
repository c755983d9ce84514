/**
 * The gcp cloud's properties in the cloud-config, an AZ's `cloud_properties` and a vm_type's
 * `cloud_properties`, validated with "did you mean" for typos. Credentials never come from here:
 * the SDK reads Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's
 * application-default login, or the metadata server on GCE).
 */
import { userError } from '../../errors.js';
import { didYouMean } from '../../manifest/suggest.js';
import { GCE_NAME, LABEL_KEY, toLabels } from './labels.js';

export interface GcpEndpoint {
  host: string;
  port: number;
  protocol: 'http' | 'https';
}

export interface GcpConfig {
  project: string;
  endpoint?: GcpEndpoint;
  network: string;
  subnetwork?: string;
  useExternalIp: boolean;
  sshUser: string;
  /** zones to list; empty: one aggregatedList over every zone of the project */
  zones: string[];
}

export interface GcpVmType {
  machineType: string;
  image: string;
  diskGb: number;
  labels: Record<string, string>;
  networkTags: string[];
  serviceAccount?: string;
}

const CLOUD_KEYS = ['project', 'api_endpoint', 'network', 'subnetwork', 'use_external_ip', 'ssh_user', 'zones', 'rate_limit', 'rate_limit_burst', 'base_dir'] as const;
const AZ_KEYS = ['zone'] as const;
const VM_KEYS = ['machine_type', 'image', 'disk_gb', 'labels', 'tags', 'service_account'] as const;
/**
 * Keys of other clouds' vm_types. One vm_type can serve AZs of several clouds (e.g.
 * `{ instance_type: t3.small, machine_type: e2-small }`), so these are ignored, not rejected.
 */
const FOREIGN_VM_KEYS = ['instance_type', 'ami', 'image_id', 'key_name', 'security_groups', 'security_group_ids', 'subnet_id', 'iam_instance_profile', 'root_disk_gb', 'spot', 'spot_price'];

export const DEFAULT_IMAGE = 'projects/debian-cloud/global/images/family/debian-12';
export const DEFAULT_MACHINE_TYPE = 'e2-small';

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const USER = /^[a-z_][a-z0-9_.-]{0,31}$/;

function checkKeys(where: string, obj: Record<string, unknown>, known: readonly string[], ignored: readonly string[] = []): void {
  for (const key of Object.keys(obj)) {
    if (known.includes(key) || ignored.includes(key)) continue;
    throw userError('cloud_property_unknown', `${where}: unknown property '${key}'${didYouMean(key, known)}`, { hint: `valid properties: ${known.join(', ')}` });
  }
}

function invalid(where: string, key: string, what: string, got: unknown, known: readonly string[]): never {
  throw userError('cloud_property_invalid', `${where}: ${key} must be ${what}, got ${JSON.stringify(got)}`, { hint: `valid properties: ${known.join(', ')}` });
}

/** `host:port`, `http://host:port` or `https://host[:port]`; a bare host:port is https. */
export function parseEndpoint(where: string, value: string): GcpEndpoint {
  const withScheme = /^[a-z]+:\/\//.test(value) ? value : `https://${value}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    return invalid(where, 'api_endpoint', 'host:port or an http(s):// URL', value, CLOUD_KEYS);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') invalid(where, 'api_endpoint', 'an http:// or https:// URL', value, CLOUD_KEYS);
  if (url.pathname !== '/' && url.pathname !== '') invalid(where, 'api_endpoint', 'host:port without a path (the client adds /compute/v1/…)', value, CLOUD_KEYS);
  const protocol = url.protocol === 'http:' ? 'http' : 'https';
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port: url.port ? Number(url.port) : protocol === 'http' ? 80 : 443, protocol };
}

export function parseGcpProperties(cloud: string, p: Record<string, unknown>): GcpConfig {
  const where = `cloud '${cloud}' (type gcp)`;
  checkKeys(where, p, CLOUD_KEYS);
  const str = (key: string, required = false): string | undefined => {
    const v = p[key];
    if (v === undefined) {
      if (required) throw userError('cloud_property_missing', `${where}: ${key} is required`, { hint: `the Google Cloud project id the VMs live in, e.g. ${key}: my-project-123` });
      return undefined;
    }
    if (typeof v !== 'string' || v === '') invalid(where, key, 'a non-empty string', v, CLOUD_KEYS);
    return v;
  };
  const project = str('project', true)!;
  if (!/^[a-z][a-z0-9.:-]{1,62}[a-z0-9]$/.test(project)) invalid(where, 'project', 'a Google Cloud project id (lower-case letters, digits and -)', project, CLOUD_KEYS);
  const endpoint = p.api_endpoint === undefined ? undefined : parseEndpoint(where, str('api_endpoint')!);
  const useExternalIp = p.use_external_ip ?? false;
  if (typeof useExternalIp !== 'boolean') invalid(where, 'use_external_ip', 'true or false', useExternalIp, CLOUD_KEYS);
  const sshUser = str('ssh_user') ?? 'director';
  if (!USER.test(sshUser)) invalid(where, 'ssh_user', 'a Linux user name (lower case, at most 32 characters)', sshUser, CLOUD_KEYS);
  const zones = p.zones ?? [];
  if (!Array.isArray(zones) || !zones.every((z) => typeof z === 'string' && /^[a-z0-9-]+$/.test(z))) invalid(where, 'zones', 'a list of zone names like us-central1-a', zones, CLOUD_KEYS);
  return { project, endpoint, network: str('network') ?? 'global/networks/default', subnetwork: str('subnetwork'), useExternalIp, sshUser, zones: zones as string[] };
}

/** The zone of an AZ: its `cloud_properties.zone`, or the AZ's name. */
export function zoneOf(cloud: string, az: string, props: Record<string, unknown>): string {
  const where = `cloud '${cloud}' (type gcp), az '${az}'`;
  checkKeys(where, props, AZ_KEYS);
  const zone = props.zone ?? az;
  if (typeof zone !== 'string' || !/^[a-z][a-z0-9-]*[a-z0-9]$/.test(zone)) invalid(where, 'zone', 'a zone name like us-central1-a', zone, AZ_KEYS);
  return zone;
}

export function parseVmType(cloud: string, vmType: string, p: Record<string, unknown>): GcpVmType {
  const where = `cloud '${cloud}' (type gcp), vm_type '${vmType}'`;
  checkKeys(where, p, VM_KEYS, FOREIGN_VM_KEYS);
  const str = (key: string): string | undefined => {
    const v = p[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v === '') invalid(where, key, 'a non-empty string', v, VM_KEYS);
    return v;
  };
  const diskGb = p.disk_gb ?? 10;
  if (typeof diskGb !== 'number' || !Number.isInteger(diskGb) || diskGb < 10 || diskGb > 65_536) invalid(where, 'disk_gb', 'a whole number of GB between 10 and 65536', diskGb, VM_KEYS);
  const rawLabels = p.labels ?? {};
  if (!isRecord(rawLabels) || !Object.values(rawLabels).every((v) => typeof v === 'string')) invalid(where, 'labels', 'a map of label keys to string values', rawLabels, VM_KEYS);
  for (const k of Object.keys(rawLabels)) if (!LABEL_KEY.test(k)) invalid(where, `labels.${k}`, 'a GCE label key (lower-case letter first, then lower-case letters, digits, _ and -, at most 63)', k, VM_KEYS);
  const tags = p.tags ?? [];
  if (!Array.isArray(tags) || !tags.every((t) => typeof t === 'string' && GCE_NAME.test(t))) invalid(where, 'tags', 'a list of network tags (lower-case letters, digits and -, starting with a letter)', tags, VM_KEYS);
  return {
    machineType: str('machine_type') ?? DEFAULT_MACHINE_TYPE,
    image: str('image') ?? DEFAULT_IMAGE,
    diskGb,
    labels: toLabels(cloud, rawLabels as Record<string, string>),
    networkTags: tags as string[],
    serviceAccount: str('service_account'),
  };
}
