/**
 * Ssh2Connector against a real (in-process, ssh2-based) SSH server over loopback TCP.
 * Nothing in the client is mocked; the server misbehaves on request.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectorError } from '../../src/errors.js';
import { backoffDelayMs, Ssh2Connector } from '../../src/ssh/connection.js';
import { ensureDirectorKey, hostKeyFingerprintOfPublicKey } from '../../src/ssh/keys.js';
import { shJoin, shq } from '../../src/ssh/quote.js';
import type { SshConnection, SshTarget } from '../../src/ssh/types.js';
import { startTestSshServer, type TestSshServer } from '../helpers/ssh2-server.js';

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
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

/** a process that is gone or a zombie has finished running */
function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

let home: string;
let key: ReturnType<typeof ensureDirectorKey>;
let server: TestSshServer;
let target: SshTarget;
/** fast retries: the backoff arithmetic is tested on its own */
const noSleep = { sleep: async () => {} };

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'director-ssh-'));
  key = ensureDirectorKey(home);
  server = await startTestSshServer({ authorizedKey: key.publicKey });
  target = { host: server.host, port: server.port, username: 'tester', privateKey: key.privateKey, label: 'web/0' };
});

afterAll(async () => {
  await server?.close();
  if (home) rmSync(home, { recursive: true, force: true });
});

describe('director key', () => {
  it('is generated once with private permissions and loaded afterwards', () => {
    const dir = join(home, 'keys');
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, 'id_ed25519')).mode & 0o777).toBe(0o600);
    expect(key.publicKey).toMatch(/^ssh-ed25519 AAAA[A-Za-z0-9+/]+=* director$/);
    expect(readFileSync(join(dir, 'id_ed25519.pub'), 'utf8').trim()).toBe(key.publicKey);
    expect(key.privateKey).toContain('BEGIN OPENSSH PRIVATE KEY');
    const again = ensureDirectorKey(home);
    expect(again).toEqual(key);
  });

  it.skipIf(!existsSync('/usr/bin/ssh-keygen'))('reports the fingerprint ssh-keygen prints', () => {
    expect(key.fingerprint).toBe(hostKeyFingerprintOfPublicKey(key.publicKey));
    const keygen = execFileSync('ssh-keygen', ['-lf', join(home, 'keys', 'id_ed25519.pub')], { encoding: 'utf8' });
    expect(keygen.split(' ')[1]).toBe(key.fingerprint);
  });
});

describe('Ssh2Connector against an ssh2 server', () => {
  let conn: SshConnection;
  beforeAll(async () => {
    conn = await new Ssh2Connector().connect(target);
  });
  afterAll(() => conn?.close());

  it('returns stdout, stderr and exit codes without rejecting on failure', async () => {
    expect(await conn.exec('echo out; echo err >&2; exit 3')).toEqual({ code: 3, signal: null, stdout: 'out\n', stderr: 'err\n' });
    expect(await conn.exec('true')).toEqual({ code: 0, signal: null, stdout: '', stderr: '' });
    const killed = await conn.exec('kill -TERM $$');
    expect(killed.code).toBeNull();
    expect(killed.signal).toBe('SIGTERM');
  });

  it('uploads a 5 MB stdin byte-exact', async () => {
    const payload = Buffer.alloc(5 * 1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7919 + (i >> 11)) & 0xff;
    const want = createHash('sha256').update(payload).digest('hex');
    const r = await conn.exec('sha256sum', { stdin: payload });
    expect(r.code).toBe(0);
    expect(r.stdout.split(' ')[0]).toBe(want);
    expect((await conn.exec('wc -c', { stdin: payload })).stdout.trim()).toBe(String(payload.length));
  });

  it('sends EOF even without stdin, so a command reading it does not hang', async () => {
    expect((await conn.exec('cat; echo done', { timeoutMs: 5000 })).stdout).toBe('done\n');
  });

  it('streams output as it arrives, in order, before the command exits', async () => {
    // The command only finishes after we answer its first line: proof the chunk was delivered live.
    const stdin = new PassThrough();
    let out = '';
    let err = '';
    const r = await conn.exec('echo ready; read x; echo "got $x"; echo warn >&2; i=0; while [ $i -lt 200 ]; do echo "n$i"; i=$((i+1)); done', {
      stdin,
      timeoutMs: 10_000,
      onOutput: (stream, chunk) => {
        if (stream === 'stderr') {
          err += chunk;
          return;
        }
        out += chunk;
        if (out === 'ready\n') stdin.end('hello\n');
      },
    });
    const expected = `ready\ngot hello\n${Array.from({ length: 200 }, (_, i) => `n${i}\n`).join('')}`;
    expect(out).toBe(expected);
    expect(r.stdout).toBe(expected);
    expect(err).toBe('warn\n');
  });

  it('keeps only the last 1 MiB of a huge output', async () => {
    const r = await conn.exec("head -c 3000000 /dev/zero | tr '\\0' a; echo END");
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBe(1024 * 1024);
    expect(r.stdout.endsWith('aaaEND\n')).toBe(true);
  });

  it('times out a slow command quickly, kills it, and the connection stays usable', async () => {
    let pid: number | undefined;
    const started = Date.now();
    const err = await rejection(
      conn.exec('echo $$; exec sleep 30', {
        timeoutMs: 500,
        onOutput: (_s, chunk) => {
          pid = Number(chunk.trim());
        },
      }),
    );
    expect(err.code).toBe('ssh_exec_timeout');
    expect(err.errorClass).toBe('infrastructure');
    expect(err.message).toContain('echo $$; exec sleep 30');
    expect(err.message).toContain('web/0');
    expect(Date.now() - started).toBeLessThan(5000);
    expect(pid).toBeGreaterThan(0);
    await waitFor('the remote sleep to be killed', () => processGone(pid!));
    expect((await conn.exec('echo still-here')).stdout).toBe('still-here\n');
  });

  it('names only the first 80 characters of a long command in a timeout', async () => {
    const long = `sleep 30; ${'x'.repeat(200)}`;
    const err = await rejection(conn.exec(long, { timeoutMs: 200 }));
    expect(err.message).toContain(JSON.stringify(long.slice(0, 80)));
    expect(err.message).not.toContain('x'.repeat(100));
  });

  it('runs 20 concurrent commands on one connection within the server session limit', async () => {
    server.resetPeaks();
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => conn.exec(`sleep 0.2; echo ${i}`)));
    expect(results.map((r) => r.stdout)).toEqual(Array.from({ length: 20 }, (_, i) => `${i}\n`));
    expect(results.every((r) => r.code === 0)).toBe(true);
    expect(server.peakSessions).toBe(8);
  });

  it('shq survives hostile strings through a real remote shell', async () => {
    const nasty = ["'; rm -rf / #", '$(id)', '`id`', 'line1\nline2\n', "it's", '\\n\\t\\\\', '"double" $HOME ${PATH}', '*', '-n', '', ' spaced  out ', 'ünïcødé ✓', "''''"];
    for (const x of nasty) {
      const r = await conn.exec(`printf %s ${shq(x)}`);
      expect(r.stdout, `remote: ${JSON.stringify(x)}`).toBe(x);
      expect(r.code).toBe(0);
      // The same through a local `sh -c`, the form the brief describes.
      expect(execFileSync('/bin/sh', ['-c', `printf %s ${shq(x)}`], { encoding: 'utf8' }), `local: ${JSON.stringify(x)}`).toBe(x);
    }
    expect((await conn.exec(`printf '%s|' ${shJoin(nasty)}`)).stdout).toBe(nasty.map((x) => `${x}|`).join(''));
    expect(() => shq('a\0b')).toThrow(DirectorError);
  });
});

describe('host key pinning', () => {
  it('connects when the pinned fingerprint matches and reports it', async () => {
    const c = await new Ssh2Connector().connect({ ...target, hostKeyFingerprint: server.hostKeyFingerprint });
    try {
      expect(c.hostKeyFingerprint).toBe(server.hostKeyFingerprint);
      expect((await c.exec('echo pinned')).stdout).toBe('pinned\n');
    } finally {
      c.close();
    }
  });

  it('reports the key seen when not pinned, matching the server key', async () => {
    const c = await new Ssh2Connector().connect(target);
    c.close();
    expect(c.hostKeyFingerprint).toBe(server.hostKeyFingerprint);
    expect(c.hostKeyFingerprint).toBe(hostKeyFingerprintOfPublicKey(server.hostPublicKey));
  });

  it('refuses a different key once, without retrying', async () => {
    const wrong = 'SHA256:' + createHash('sha256').update('someone else').digest('base64').replace(/=+$/, '');
    const before = server.connectionsAccepted;
    const err = await rejection(new Ssh2Connector(noSleep).connect({ ...target, hostKeyFingerprint: wrong }));
    expect(err.code).toBe('ssh_host_key_mismatch');
    expect(err.errorClass).toBe('infrastructure');
    expect(err.message).toContain('web/0');
    expect(err.message).toContain(`${server.host}:${server.port}`);
    expect(err.message).toContain(wrong);
    expect(err.message).toContain(server.hostKeyFingerprint);
    expect(err.hint).toMatch(/replaced|intercept/);
    expect(err.hint).toMatch(/recreate/i);
    expect(server.connectionsAccepted - before).toBe(1);
  });
});

describe('connect failures and retries', () => {
  it('reaches a server that refuses the first 2 attempts on the 3rd', async () => {
    const delays: number[] = [];
    const connector = new Ssh2Connector({ random: () => 0.5, sleep: async (ms) => void delays.push(ms) });
    const before = server.connectionsAccepted;
    server.refuseNext(2);
    const c = await connector.connect(target);
    try {
      expect(server.connectionsAccepted - before).toBe(3);
      expect(delays).toEqual([50, 100]); // full jitter at random()=0.5 over 100, 200 ms
      expect((await c.exec('echo third')).stdout).toBe('third\n');
    } finally {
      c.close();
    }
  });

  it('gives up after connectAttempts with ssh_unreachable naming the target and the cause', async () => {
    const before = server.connectionsAccepted;
    server.refuseNext(3);
    const err = await rejection(new Ssh2Connector({ ...noSleep, connectAttempts: 3 }).connect(target));
    expect(err.code).toBe('ssh_unreachable');
    expect(err.errorClass).toBe('infrastructure');
    expect(err.message).toContain('web/0');
    expect(err.message).toMatch(/Connection lost before handshake|ECONNRESET|closed before/);
    expect(err.hint).toBeTruthy();
    expect(server.connectionsAccepted - before).toBe(3);
  });

  it('retries a port nobody listens on, then reports ECONNREFUSED', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const sleeps: number[] = [];
    const err = await rejection(new Ssh2Connector({ connectAttempts: 4, sleep: async (ms) => void sleeps.push(ms) }).connect({ ...target, port, label: undefined }));
    expect(err.code).toBe('ssh_unreachable');
    expect(err.message).toContain(`tester@127.0.0.1:${port}`);
    expect(err.message).toContain('ECONNREFUSED');
    expect(sleeps).toHaveLength(3);
  });

  it('does not retry a refused key', async () => {
    const other = ensureDirectorKey(join(home, 'other-home'));
    const before = server.connectionsAccepted;
    const err = await rejection(new Ssh2Connector(noSleep).connect({ ...target, privateKey: other.privateKey }));
    expect(err.code).toBe('ssh_auth_failed');
    expect(server.connectionsAccepted - before).toBe(1);
  });

  it('bounds handshakes in flight per host and globally', async () => {
    for (const opts of [{ maxHandshakesPerHost: 3 }, { maxConcurrentHandshakes: 2 }]) {
      server.resetPeaks();
      const connector = new Ssh2Connector(opts);
      const conns = await Promise.all(Array.from({ length: 16 }, () => connector.connect(target)));
      for (const c of conns) c.close();
      expect(server.peakHandshakes, JSON.stringify(opts)).toBe(Object.values(opts)[0]);
    }
  });

  it('backs off exponentially with full jitter, capped at 2 s', () => {
    expect([1, 2, 3, 4, 5, 6, 7].map((a) => backoffDelayMs(a, () => 0.999999))).toEqual([99, 199, 399, 799, 1599, 1999, 1999]);
    expect(backoffDelayMs(3, () => 0)).toBe(0);
  });
});

describe('connection lifecycle', () => {
  it('fails a running command with ssh_connection_lost when the connection drops', async () => {
    const c = await new Ssh2Connector().connect(target);
    let started = false;
    const running = c.exec('echo started; sleep 30', {
      onOutput: (_s, chunk) => {
        if (chunk.includes('started')) started = true;
      },
    });
    await waitFor('the command to start', () => started);
    server.dropAll();
    const err = await rejection(running);
    expect(err.code).toBe('ssh_connection_lost');
    expect(err.message).toContain('web/0');
    // The next command reconnects (the server still listens) and runs.
    expect((await c.exec('true')).code).toBe(0);
    c.close();
  });

  it('close() is idempotent and later execs fail cleanly', async () => {
    const c = await new Ssh2Connector().connect(target);
    c.close();
    c.close();
    expect((await rejection(c.exec('true'))).code).toBe('ssh_connection_lost');
  });

});
