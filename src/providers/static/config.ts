/**
 * The static cloud's properties in the cloud-config: a pool of machines that already exist, how
 * to log in to them, and optionally a jump host. Validated here, with "did you mean" for typos.
 */
import { userInfo } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { userError } from '../../errors.js';
import { didYouMean } from '../../manifest/suggest.js';

export interface StaticHost {
  address: string;
  port: number;
  user: string;
  /** `SHA256:…` when the operator pinned it in the cloud-config */
  hostKey?: string;
  /** where the director keeps its files on this host (relative to the user's home unless absolute) */
  baseDir: string;
  /** `static-<address>:<port>` */
  cid: string;
}

export interface StaticBastion {
  address: string;
  port: number;
  user: string;
  hostKey?: string;
}

export interface StaticConfig {
  /** path of the private key the director logs in with */
  privateKeyPath: string;
  user: string;
  sudo: boolean;
  bastion?: StaticBastion;
  hosts: StaticHost[];
}

const CLOUD_KEYS = ['hosts', 'private_key', 'user', 'sudo', 'bastion', 'base_dir', 'rate_limit', 'rate_limit_burst'] as const;
const HOST_KEYS = ['address', 'port', 'user', 'host_key', 'base_dir'] as const;
const BASTION_KEYS = ['address', 'port', 'user', 'host_key'] as const;

const FINGERPRINT = /^SHA256:[A-Za-z0-9+/]{43}=?$/;
const USER = /^[A-Za-z_][A-Za-z0-9_.-]*$/;

export function staticCid(address: string, port: number): string {
  return `static-${address}:${port}`;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function parseStaticProperties(cloud: string, properties: Record<string, unknown>, home: string): StaticConfig {
  const where = `cloud '${cloud}' (type static)`;
  const fail = (field: string, what: string, got: unknown, hint?: string) => {
    throw userError('cloud_property_invalid', `${where}: ${field} must be ${what}, got ${JSON.stringify(got)}`, {
      hint: hint ?? `valid properties: ${CLOUD_KEYS.join(', ')}; each host: ${HOST_KEYS.join(', ')}`,
    });
  };
  const unknownKeys = (obj: Record<string, unknown>, known: readonly string[], prefix: string) => {
    for (const key of Object.keys(obj)) {
      if (!known.includes(key)) {
        throw userError('cloud_property_unknown', `${where}: unknown property '${prefix}${key}'${didYouMean(key, known)}`, {
          hint: `valid ${prefix === '' ? 'properties' : `properties of ${prefix.replace(/\.$/, '')}`}: ${known.join(', ')}`,
        });
      }
    }
  };
  const str = (obj: Record<string, unknown>, key: string, field: string): string | undefined => {
    const v = obj[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v.trim() === '') fail(field, 'a non-empty string', v);
    return v as string;
  };
  const port = (obj: Record<string, unknown>, field: string): number => {
    const v = obj.port;
    if (v === undefined) return 22;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) fail(field, 'a TCP port (1-65535)', v);
    return v as number;
  };
  const user = (obj: Record<string, unknown>, field: string): string | undefined => {
    const v = str(obj, 'user', field);
    if (v !== undefined && !USER.test(v)) fail(field, 'a user name', v);
    return v;
  };
  const hostKey = (obj: Record<string, unknown>, field: string): string | undefined => {
    const v = str(obj, 'host_key', field);
    if (v !== undefined && !FINGERPRINT.test(v)) fail(field, 'a SHA-256 host key fingerprint as `ssh-keygen -lf` prints it (SHA256:…)', v, 'on the host: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub');
    return v;
  };
  const baseDir = (obj: Record<string, unknown>, field: string): string | undefined => {
    const v = str(obj, 'base_dir', field);
    if (v === undefined) return undefined;
    // The director deletes this directory when it releases the host: never a root or a parent.
    const parts = v.split('/').filter((p) => p !== '' && p !== '.');
    if (parts.length === 0 || parts.includes('..') || v.includes('\0')) {
      fail(field, "a directory of the director's own (relative to the user's home, or absolute, not / and without ..)", v, 'the director removes base_dir when it releases a host, so it must be a directory of its own');
    }
    return v;
  };

  unknownKeys(properties, CLOUD_KEYS, '');

  const privateKey = str(properties, 'private_key', 'private_key');
  const defaultUser = user(properties, 'user') ?? userInfo().username;
  const cloudBase = baseDir(properties, 'base_dir') ?? 'director';
  const sudo = properties.sudo;
  if (sudo !== undefined && typeof sudo !== 'boolean') fail('sudo', 'true or false', sudo);

  let bastion: StaticBastion | undefined;
  if (properties.bastion !== undefined) {
    const b = properties.bastion;
    if (!isRecord(b)) fail('bastion', 'a map with address, port, user, host_key', b);
    const rec = b as Record<string, unknown>;
    unknownKeys(rec, BASTION_KEYS, 'bastion.');
    const address = str(rec, 'address', 'bastion.address');
    if (address === undefined) fail('bastion.address', 'the jump host\'s address', undefined);
    bastion = { address: address!, port: port(rec, 'bastion.port'), user: user(rec, 'bastion.user') ?? defaultUser, hostKey: hostKey(rec, 'bastion.host_key') };
  }

  const rawHosts = properties.hosts;
  if (!Array.isArray(rawHosts) || rawHosts.length === 0) {
    fail('hosts', 'a non-empty list of machines ({ address, port, user, host_key, base_dir })', rawHosts, 'list the machines the director may use under hosts:, e.g. - { address: 10.0.0.5 }');
  }
  const hosts: StaticHost[] = [];
  const seen = new Map<string, number>();
  (rawHosts as unknown[]).forEach((raw, i) => {
    const field = `hosts[${i}]`;
    if (!isRecord(raw)) fail(field, 'a map with address, port, user, host_key, base_dir', raw);
    const h = raw as Record<string, unknown>;
    unknownKeys(h, HOST_KEYS, `${field}.`);
    const address = str(h, 'address', `${field}.address`);
    if (address === undefined) fail(`${field}.address`, "the host's address", undefined);
    const p = port(h, `${field}.port`);
    const cid = staticCid(address!, p);
    const dup = seen.get(cid);
    if (dup !== undefined) {
      throw userError('cloud_property_invalid', `${where}: hosts[${i}] (${address}:${p}) is listed twice (also hosts[${dup}])`, { hint: 'each machine may appear once in hosts' });
    }
    seen.set(cid, i);
    hosts.push({
      address: address!,
      port: p,
      user: user(h, `${field}.user`) ?? defaultUser,
      hostKey: hostKey(h, `${field}.host_key`),
      baseDir: baseDir(h, `${field}.base_dir`) ?? cloudBase,
      cid,
    });
  });

  return {
    privateKeyPath: privateKey === undefined ? join(home, 'keys', 'id_ed25519') : isAbsolute(privateKey) ? privateKey : resolve(privateKey),
    user: defaultUser,
    sudo: (sudo as boolean | undefined) ?? false,
    bastion,
    hosts,
  };
}
