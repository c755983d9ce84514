import { chmodSync, existsSync, linkSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { DirectorError } from '../errors.js';
import { sha256Fingerprint } from './fingerprint.js';

const { utils } = ssh2;

export interface DirectorKey {
  /** OpenSSH-format private key, as written to `<home>/keys/id_ed25519` */
  privateKey: string;
  /** one line, `ssh-ed25519 AAAA… director`, ready for authorized_keys */
  publicKey: string;
  /** `SHA256:…` of the public key, as `ssh-keygen -lf` prints it */
  fingerprint: string;
}

/**
 * ssh2 1.17's `generateKeyPairSync('ed25519')` drops a leading zero byte about once in 256 keys
 * (measured 16 in 5000), producing a key that even ssh2's own parser rejects. Every ed25519 key
 * the director makes (its own, the local cloud's host keys) comes from here, which throws such
 * keys away.
 */
export function generateEd25519(comment?: string): { private: string; public: string; parsedPub: ssh2.ParsedKey } {
  for (let attempt = 0; attempt < 32; attempt++) {
    const keys = comment === undefined ? utils.generateKeyPairSync('ed25519') : utils.generateKeyPairSync('ed25519', { comment });
    const parsedPub = utils.parseKey(keys.public);
    if (!(parsedPub instanceof Error) && !(utils.parseKey(keys.private) instanceof Error)) return { ...keys, parsedPub };
  }
  throw new DirectorError('ssh_keygen_failed', 'internal', 'could not generate a well-formed ed25519 key in 32 attempts');
}

/**
 * Returns the director's SSH key pair, generating it on first use.
 *
 * The private key is the source of truth: the public half is derived from it on every load,
 * so a missing or edited `.pub` cannot make us install a key we cannot log in with.
 */
export function ensureDirectorKey(home: string): DirectorKey {
  const dir = join(home, 'keys');
  const privPath = join(dir, 'id_ed25519');
  const pubPath = `${privPath}.pub`;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // mkdir's mode is ignored for a directory that already exists and is filtered by umask.
  chmodSync(dir, 0o700);

  if (!existsSync(privPath)) {
    const generated = generateEd25519('director');
    // Written under a private name then hard-linked into place: link fails if another
    // director process won the race, and nobody ever reads a half-written key.
    const tmp = `${privPath}.${process.pid}.${Date.now()}.tmp`;
    writeFileSync(tmp, generated.private, { mode: 0o600, flag: 'wx' });
    try {
      linkSync(tmp, privPath);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    } finally {
      unlinkSync(tmp);
    }
  }

  const privateKey = readFileSync(privPath, 'utf8');
  const parsed = utils.parseKey(privateKey);
  if (parsed instanceof Error || !parsed.isPrivateKey()) {
    throw new DirectorError('ssh_invalid_director_key', 'user', `${privPath} is not a usable OpenSSH private key${parsed instanceof Error ? `: ${parsed.message}` : ''}`, {
      hint: `Move ${privPath} (and ${pubPath}) aside; the director generates a new key on its next run. VMs created with the old key will need to be recreated.`,
      cause: parsed instanceof Error ? parsed : undefined,
    });
  }
  const blob = parsed.getPublicSSH();
  const publicKey = `${parsed.type} ${blob.toString('base64')} ${parsed.comment || 'director'}`;
  const onDisk = existsSync(pubPath) ? readFileSync(pubPath, 'utf8').trim() : undefined;
  if (onDisk !== publicKey) writeFileSync(pubPath, `${publicKey}\n`, { mode: 0o644 });
  return { privateKey, publicKey, fingerprint: sha256Fingerprint(blob) };
}

/**
 * Fingerprint of a public key in OpenSSH one-line form (`ssh-ed25519 AAAA… comment`, as in a
 * `.pub` file or an `ssh_host_*_key.pub`), for pinning a host key known out of band.
 */
export function hostKeyFingerprintOfPublicKey(opensshLine: string): string {
  const parsed = utils.parseKey(opensshLine.trim());
  if (parsed instanceof Error) {
    throw new DirectorError('ssh_invalid_public_key', 'internal', `not an OpenSSH public key line: ${JSON.stringify(opensshLine.slice(0, 80))}: ${parsed.message}`, {
      cause: parsed,
    });
  }
  return sha256Fingerprint(parsed.getPublicSSH());
}
