/**
 * A tiny in-process SSH server (ssh2's Server) for tests: publickey auth against one key,
 * `exec` through `/bin/sh -c`, and knobs to misbehave (refuse connections, drop them).
 *
 * It fronts ssh2 with its own net.Server so it can close sockets before any SSH byte is sent,
 * which is what OpenSSH's MaxStartups does to a burst of handshakes.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import net from 'node:net';
import ssh2 from 'ssh2';
import type { Connection, ParsedKey } from 'ssh2';

const { Server, utils } = ssh2;

export interface TestSshServer {
  host: string;
  port: number;
  /** OpenSSH one-line public host key */
  hostPublicKey: string;
  /** `SHA256:…` of the host key, computed independently of src/ssh */
  hostKeyFingerprint: string;
  /** TCP connections accepted so far, refused ones included */
  readonly connectionsAccepted: number;
  /** most session channels ever open at once on one connection */
  readonly peakSessions: number;
  /** most connections ever between TCP accept and successful authentication at once */
  readonly peakHandshakes: number;
  resetPeaks(): void;
  /** close the next `n` TCP connections before the SSH banner */
  refuseNext(n: number): void;
  /** destroy every open connection's socket (simulates a VM vanishing) */
  dropAll(): void;
  close(): Promise<void>;
}

function fingerprintOfLine(line: string): string {
  const blob = Buffer.from(line.trim().split(/\s+/)[1] ?? '', 'base64');
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

function parse(key: string): ParsedKey {
  const parsed = utils.parseKey(key);
  if (parsed instanceof Error) throw parsed;
  return parsed;
}

export async function startTestSshServer(opts: {
  authorizedKey: string;
  host?: string;
  /** refuse session channels beyond this many per connection, like OpenSSH's MaxSessions (10) */
  maxSessions?: number;
}): Promise<TestSshServer> {
  const maxSessions = opts.maxSessions ?? 10;
  let peakSessions = 0;
  let handshaking = 0;
  let peakHandshakes = 0;
  const host = opts.host ?? '127.0.0.1';
  const hostKey = utils.generateKeyPairSync('ed25519', { comment: 'test-host' });
  const allowed = parse(opts.authorizedKey);
  const allowedBlob = allowed.getPublicSSH();
  const sockets = new Set<net.Socket>();
  const children = new Set<number>();
  let refuse = 0;
  let accepted = 0;

  const killGroup = (pid: number) => {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // already gone
    }
  };

  const ssh = new Server({ hostKeys: [hostKey.private] }, (client: Connection) => {
    // An unhandled 'error' (e.g. the client resets mid-handshake) would crash the test run.
    client.on('error', () => {});
    handshaking++;
    peakHandshakes = Math.max(peakHandshakes, handshaking);
    let authenticated = false;
    const handshakeOver = () => {
      if (authenticated) return;
      authenticated = true;
      handshaking--;
    };
    client.on('ready', handshakeOver);
    client.on('close', handshakeOver);
    client.on('authentication', (ctx) => {
      if (ctx.method !== 'publickey' || ctx.key.algo !== allowed.type || !ctx.key.data.equals(allowedBlob)) {
        ctx.reject(['publickey']);
        return;
      }
      if (ctx.signature === undefined || ctx.blob === undefined) {
        ctx.accept(); // the client is asking whether this key would do
        return;
      }
      if (allowed.verify(ctx.blob, ctx.signature, ctx.hashAlgo)) ctx.accept();
      else ctx.reject(['publickey']);
    });
    let openSessions = 0;
    client.on('session', (acceptSession, rejectSession) => {
      if (openSessions >= maxSessions) {
        rejectSession();
        return;
      }
      const session = acceptSession();
      openSessions++;
      peakSessions = Math.max(peakSessions, openSessions);
      session.on('close', () => openSessions--);
      let pid: number | undefined;
      session.on('signal', (accept, _reject, info) => {
        accept?.();
        if (pid !== undefined) {
          try {
            process.kill(-pid, `SIG${info.name}` as NodeJS.Signals);
          } catch {
            // already gone
          }
        }
      });
      session.on('exec', (accept, _reject, info) => {
        const stream = accept();
        // Own process group, so a signal or a closed channel takes the whole command tree,
        // as sshd's killpg() does.
        const child = spawn('/bin/sh', ['-c', info.command], { stdio: 'pipe', detached: true });
        pid = child.pid;
        if (pid !== undefined) children.add(pid);
        child.stdin.on('error', () => {}); // EPIPE when the command ignores its stdin
        stream.on('error', () => {});
        stream.pipe(child.stdin);
        child.stdout.on('data', (d: Buffer) => stream.write(d));
        child.stderr.on('data', (d: Buffer) => stream.stderr.write(d));
        child.on('close', (code, signal) => {
          if (child.pid !== undefined) children.delete(child.pid);
          if (signal) stream.exit(signal.replace(/^SIG/, ''), false, '');
          else stream.exit(code ?? 255);
          stream.end();
        });
        stream.on('close', () => {
          if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) killGroup(child.pid);
        });
      });
    });
  });

  const front = net.createServer((sock) => {
    accepted++;
    if (refuse > 0) {
      refuse--;
      sock.destroy();
      return;
    }
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    ssh.injectSocket(sock);
  });
  await new Promise<void>((resolve, reject) => {
    front.once('error', reject);
    front.listen(0, host, () => resolve());
  });
  const port = (front.address() as net.AddressInfo).port;

  return {
    host,
    port,
    hostPublicKey: hostKey.public,
    hostKeyFingerprint: fingerprintOfLine(hostKey.public),
    get connectionsAccepted() {
      return accepted;
    },
    get peakSessions() {
      return peakSessions;
    },
    get peakHandshakes() {
      return peakHandshakes;
    },
    resetPeaks() {
      peakSessions = 0;
      peakHandshakes = 0;
    },
    refuseNext(n: number) {
      refuse = n;
    },
    dropAll() {
      for (const s of sockets) s.destroy();
    },
    close() {
      for (const pid of children) killGroup(pid);
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => front.close(() => resolve()));
    },
  };
}
