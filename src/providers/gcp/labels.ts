/**
 * The director's tags as GCE labels, and its VM names as GCE instance names.
 *
 * GCE label keys must match `[a-z][a-z0-9_-]{0,62}` and values `[a-z0-9_-]{0,63}` (lower case).
 * Keys are the director's own fixed names (and the few keys `setMetadata` callers use), so they are
 * validated, not converted. Values are free text (deployment names, ISO timestamps), so they are
 * encoded reversibly: every byte outside `[a-z0-9-]` becomes `_` + two hex digits (`_` itself is
 * `_5f`). A value that is already valid and has no `_` stays as it is, so uuids, indexes and
 * plain names read naturally in the console, and `2024-05-01T10:00:00.000Z` becomes
 * `2024-05-01_5410_3a00_3a00_2e000_5a`. Filters encode the same way, so `list` still matches.
 */
import { createHash } from 'node:crypto';
import { userError } from '../../errors.js';

export const LABEL_KEY = /^[a-z][a-z0-9_-]{0,62}$/;
const MAX_LABEL = 63;
/** GCE instance (and network tag) names */
export const GCE_NAME = /^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** Label the wire-level fake sets on instances whose SSH listens on a port other than 22 (tests). */
export const LABEL_SSH_PORT = 'director-ssh-port';

export function encodeLabelValue(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += /[a-z0-9-]/.test(c) ? c : `_${byte.toString(16).padStart(2, '0')}`;
  }
  return out;
}

export function decodeLabelValue(value: string): string {
  if (!value.includes('_')) return value;
  const bytes: number[] = [];
  for (let i = 0; i < value.length; i++) {
    const hex = value.slice(i + 1, i + 3);
    if (value[i] === '_' && /^[0-9a-f]{2}$/.test(hex)) {
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(value.charCodeAt(i)); // a label someone else wrote; keep it as is
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Director tags → GCE labels, checked before any API call so that errors name the tag. */
export function toLabels(cloud: string, tags: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(tags)) {
    if (!LABEL_KEY.test(key)) {
      throw userError('gcp_label_invalid', `cloud '${cloud}' (type gcp): tag key '${key}' cannot be a GCE label key`, {
        hint: 'GCE label keys start with a lower-case letter and contain only lower-case letters, digits, _ and -, at most 63 characters',
      });
    }
    const encoded = encodeLabelValue(value);
    if (encoded.length > MAX_LABEL) {
      throw userError('gcp_label_invalid', `cloud '${cloud}' (type gcp): the value of tag '${key}' is too long for a GCE label (${encoded.length} characters once encoded, at most ${MAX_LABEL}): ${JSON.stringify(value)}`, {
        hint: 'GCE label values hold at most 63 lower-case letters, digits, _ and -; other characters take 3 each once encoded. Use a shorter name (deployment and instance group names become labels)',
      });
    }
    out[key] = encoded;
  }
  return out;
}

/** GCE labels → director tags, leaving out the labels that are not tags (the test SSH port). */
export function fromLabels(labels: Record<string, string> | null | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(labels ?? {})) {
    if (key === LABEL_SSH_PORT) continue;
    out[key] = decodeLabelValue(value);
  }
  return out;
}

/** `(labels.a = "x") AND (labels.b = "y")`, the Compute list filter for all of these tags. */
export function labelFilter(cloud: string, tags: Record<string, string>): string {
  return Object.entries(toLabels(cloud, tags))
    .map(([k, v]) => `(labels.${k} = "${v}")`)
    .join(' AND ');
}

const slug = (s: string) =>
  s
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/-+/g, '-')
    .replace(/^-|-$/g, '');

/**
 * `d-<deployment>-<group>-<index>-<short id>`, a valid GCE name (`[a-z]([-a-z0-9]{0,61}[a-z0-9])?`).
 * The short id is a hash of the instance id and creation time: a recreated instance gets a new
 * name while its old VM still exists, and a retried create (after throttling) gets the same name,
 * so the retry is recognised instead of creating a second VM.
 */
export function instanceName(tags: Record<string, string>): string {
  const short = createHash('sha256').update(`${tags.instance_id ?? ''}|${tags.created_at ?? ''}|${tags.deployment ?? ''}|${tags.index ?? ''}`).digest('hex').slice(0, 8);
  const index = slug(tags.index ?? '0') || '0';
  const tail = `-${index}-${short}`;
  let dep = slug(tags.deployment ?? 'x') || 'x';
  let group = slug(tags.instance_group ?? 'vm') || 'vm';
  // Keep 63 characters: shorten the longer of deployment and group first.
  while (2 + dep.length + 1 + group.length + tail.length > 63) {
    if (dep.length >= group.length) dep = dep.slice(0, -1);
    else group = group.slice(0, -1);
  }
  const name = `d-${dep.replace(/-$/, '')}-${group.replace(/-$/, '')}${tail}`.replace(/-+/g, '-');
  return name;
}

/** A UUID derived from the VM's identity: the same logical create always sends the same requestId. */
export function requestIdFor(...parts: string[]): string {
  const h = createHash('sha256').update(parts.join('|')).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}
