import { createHash } from 'node:crypto';

/**
 * `SHA256:<base64, no padding>` of an SSH wire-format public key blob: the exact string
 * `ssh-keygen -lf` prints, so operators can compare it with what they see on the host.
 */
export function sha256Fingerprint(keyBlob: Buffer): string {
  return `SHA256:${createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '')}`;
}
