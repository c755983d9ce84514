/**
 * Ssh2Connector against a real OpenSSH sshd with its default limits (MaxStartups 10:30:100,
 * MaxSessions 10). Skipped, with a printed reason, where sshd is not installed.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectorError } from '../../src/errors.js';
import { Ssh2Connector } from '../../src/ssh/connection.js';
import { ensureDirectorKey, hostKeyFingerprintOfPublicKey } from '../../src/ssh/keys.js';
import { shq } from '../../src/ssh/quote.js';
import type { SshConnection, SshTarget } from '../../src/ssh/types.js';
import { readHostPublicKey, type Sshd, sshdUnavailableReason, startSshd } from '../helpers/sshd.js';

const unavailable = sshdUnavailableReason();
if (unavailable) console.warn(`skipping real OpenSSH tests: ${unavailable}`);
const describeSshd = unavailable ? describe.skip : describe;

async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function rejection(p: Promise<unknown>): Promise<DirectorError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(DirectorError);
    return e as DirectorError;
  }
  throw new Error('expected a rejection');
}

/** gone, or a zombie waiting to be reaped (reaping is slow on these machines) */
function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

describeSshd('Ssh2Connector against OpenSSH sshd', () => {
  let home: string;
  let sshd: Sshd;
  let target: SshTarget;
  let conn: SshConnection;

  beforeAll(async () => {
    home = mkdtempSync(join(tmpdir(), 'director-openssh-'));
    const key = ensureDirectorKey(home);
    sshd = await startSshd({ authorizedKeys: [key.publicKey] });
    target = { host: sshd.host, port: sshd.port, username: sshd.username, privateKey: key.privateKey, label: 'bastion/0' };
    conn = await new Ssh2Connector().connect({ ...target, hostKeyFingerprint: sshd.hostKeyFingerprint });
  });

  afterAll(async () => {
    conn?.close();
    await sshd?.stop();
    if (home) rmSync(home, { recursive: true, force: true });
  });

  it('runs commands and reports exit codes', async () => {
    // Through the user's login shell (root: bash), which may source ~/.bashrc: no assumptions
    // beyond POSIX sh, and output is compared exactly so rc-file noise would show up here.
    const r = await conn.exec('echo out; echo err >&2; exit 4');
    expect(r).toEqual({ code: 4, signal: null, stdout: 'out\n', stderr: 'err\n' });
    expect((await conn.exec(`printf %s ${shq("it's $(id) `x`")}`)).stdout).toBe("it's $(id) `x`");
  });

  it('uploads a 5 MB stdin byte-exact', async () => {
    const payload = Buffer.alloc(5 * 1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + (i >> 9)) & 0xff;
    const r = await conn.exec('sha256sum', { stdin: payload });
    expect(r.code).toBe(0);
    expect(r.stdout.split(' ')[0]).toBe(createHash('sha256').update(payload).digest('hex'));
  });

  it('sees the host key ssh-keygen -lf prints', async () => {
    const c = await new Ssh2Connector().connect(target);
    c.close();
    expect(c.hostKeyFingerprint).toBe(sshd.hostKeyFingerprint);
    expect(hostKeyFingerprintOfPublicKey(readHostPublicKey(sshd))).toBe(sshd.hostKeyFingerprint);
    expect(conn.hostKeyFingerprint).toBe(sshd.hostKeyFingerprint);
  });

  it('refuses a host whose key does not match the pinned one', async () => {
    const other = `SHA256:${createHash('sha256').update('not this host').digest('base64').replace(/=+$/, '')}`;
    const err = await rejection(new Ssh2Connector().connect({ ...target, hostKeyFingerprint: other }));
    expect(err.code).toBe('ssh_host_key_mismatch');
    expect(err.message).toContain(other);
    expect(err.message).toContain(sshd.hostKeyFingerprint);
  });

  it('times out a command, asks sshd to kill it, and keeps the connection usable', async () => {
    let pid = 0;
    const err = await rejection(
      conn.exec('echo $$; exec sleep 37', {
        timeoutMs: 500,
        onOutput: (_s, chunk) => {
          pid = Number(chunk.trim());
        },
      }),
    );
    expect(err.code).toBe('ssh_exec_timeout');
    expect(pid).toBeGreaterThan(0);
    if (sshd.username === 'root') {
      // sshd skips post-auth privilege separation for root and then refuses `signal` requests,
      // so the command outlives its channel; the log proves we asked. Clean up by hand.
      await waitFor('sshd to log the signal request', () => sshd.log().includes('session signalling requires privilege separation'));
      process.kill(pid, 'SIGKILL');
    }
    await waitFor(`remote pid ${pid} to die`, () => processGone(pid));
    expect((await conn.exec('echo alive')).stdout).toBe('alive\n');
  });

  it('runs 20 concurrent commands on one connection despite MaxSessions 10', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => conn.exec(`sleep 0.1; echo ${i}`)));
    expect(results.map((r) => r.stdout)).toEqual(Array.from({ length: 20 }, (_, i) => `${i}\n`));
  });

  it('opens 40 connections at once through one connector', async () => {
    const connector = new Ssh2Connector();
    const conns = await Promise.all(Array.from({ length: 40 }, () => connector.connect({ ...target, hostKeyFingerprint: sshd.hostKeyFingerprint })));
    try {
      const outs = await Promise.all(conns.map((c, i) => c.exec(`echo ${i}`)));
      expect(outs.map((r) => r.stdout)).toEqual(Array.from({ length: 40 }, (_, i) => `${i}\n`));
    } finally {
      for (const c of conns) c.close();
    }
  });

  it('survives MaxStartups drops by retrying when the per-host limit is off', async () => {
    // 40 handshakes at once: sshd drops some (30% and up past 10 pending); backoff brings them back.
    const connector = new Ssh2Connector({ maxHandshakesPerHost: 1000, maxConcurrentHandshakes: 1000, connectAttempts: 10 });
    const conns = await Promise.all(Array.from({ length: 40 }, () => connector.connect(target)));
    for (const c of conns) c.close();
    expect(conns).toHaveLength(40);
    expect(sshd.log()).toMatch(/drop connection|beginning MaxStartups throttling/);
  });
});
