/**
 * One local VM's SSH endpoint: an in-process ssh2 server bound to the VM's own loopback address
 * that runs exec requests as `/bin/sh -c` in the VM's root. It speaks just enough of what sshd
 * does for the director's needs (publickey auth, exec with env, stdin/stdout/stderr, exit status,
 * signals) and refuses the rest (pty, shell, sftp, forwarding).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import ssh2 from 'ssh2';
import type { Connection, ParsedKey, ServerChannel } from 'ssh2';
import { VM_ENV_MARKER } from './processes.js';

const { Server, utils } = ssh2;

export interface VmEndpointOptions {
  cid: string;
  ip: string;
  port: number;
  root: string;
  /** the only user name accepted: the OS user the supervisor runs as */
  user: string;
  /** OpenSSH-format private host key */
  hostKey: string;
  /** OpenSSH `ssh-ed25519 AAAA…` lines */
  authorizedKeys: string[];
  logger: Logger;
}

/** The signal names RFC 4254 (and ssh2) can carry in exit-signal. */
const RFC4254_SIGNALS = new Set(
  ['ABRT', 'ALRM', 'FPE', 'HUP', 'ILL', 'INT', 'QUIT', 'SEGV', 'TERM', 'USR1', 'USR2', 'KILL', 'PIPE'].map((s) => `SIG${s}`),
);

/** Session env requests may not override these: they define the VM. */
const PROTECTED_ENV = new Set([VM_ENV_MARKER, 'HOME', 'PATH']);

export function vmEnvironment(cid: string, root: string, user: string): Record<string, string> {
  return {
    HOME: root,
    USER: user,
    LOGNAME: user,
    SHELL: '/bin/sh',
    // The director's jobs are often Node programs: put the node that runs the supervisor first.
    PATH: `${path.dirname(process.execPath)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
    LANG: 'C.UTF-8',
    [VM_ENV_MARKER]: cid,
  };
}

export function parseAuthorizedKeys(lines: string[]): ParsedKey[] {
  const keys: ParsedKey[] = [];
  for (const line of lines) {
    const parsed = utils.parseKey(line.trim()) as ParsedKey | ParsedKey[] | Error;
    if (parsed instanceof Error) throw new Error(`invalid authorized key: ${parsed.message}`);
    // parseKey also reads private key files (returning an array for OpenSSH ones): refuse those,
    // a private key has no business travelling to a VM.
    if (Array.isArray(parsed) || parsed.isPrivateKey()) throw new Error('invalid authorized key: this is a private key');
    keys.push(parsed);
  }
  return keys;
}

export class VmSshEndpoint {
  private readonly ssh: InstanceType<typeof Server>;
  private readonly tcp: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly allowed: ParsedKey[];
  private readonly baseEnv: Record<string, string>;
  private readonly log: Logger;

  constructor(private readonly opts: VmEndpointOptions) {
    this.allowed = parseAuthorizedKeys(opts.authorizedKeys);
    this.baseEnv = vmEnvironment(opts.cid, opts.root, opts.user);
    this.log = opts.logger;
    this.ssh = new Server({ hostKeys: [opts.hostKey], ident: 'director-local-cloud' }, (conn, info) =>
      this.onConnection(conn, info.ip),
    );
    // We own the TCP listener (and hand sockets to ssh2) so we can turn Nagle off before the
    // handshake and destroy every socket when the VM goes away.
    this.tcp = net.createServer((sock) => {
      sock.setNoDelay(true);
      this.sockets.add(sock);
      sock.once('close', () => this.sockets.delete(sock));
      this.ssh.injectSocket(sock);
    });
  }

  /** Rejects with the bind error (its `code` is EADDRINUSE / EADDRNOTAVAIL when the address is taken). */
  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => {
        this.tcp.off('listening', onListening);
        reject(err);
      };
      const onListening = () => {
        this.tcp.off('error', onError);
        this.tcp.on('error', (err) => this.log.error({ err }, 'ssh listener error'));
        resolve();
      };
      this.tcp.once('error', onError);
      this.tcp.once('listening', onListening);
      this.tcp.listen({ host: this.opts.ip, port: this.opts.port, exclusive: true });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.tcp.listening) {
        for (const s of this.sockets) s.destroy();
        resolve();
        return;
      }
      this.tcp.close(() => resolve());
      for (const s of this.sockets) s.destroy();
    });
  }

  private onConnection(conn: Connection, remote: string): void {
    conn.on('error', (err: Error) => this.log.debug({ err: err.message, remote }, 'ssh connection error'));
    conn.on('authentication', (ctx) => {
      if (ctx.method !== 'publickey' || ctx.username !== this.opts.user) {
        ctx.reject(['publickey']);
        return;
      }
      const key = this.allowed.find((k) => k.getPublicSSH().equals(ctx.key.data));
      if (!key) {
        ctx.reject(['publickey']);
        return;
      }
      // Without a signature the client only asks whether this key would do.
      if (!ctx.signature) {
        ctx.accept();
        return;
      }
      if (ctx.blob && key.verify(ctx.blob, ctx.signature, ctx.hashAlgo) === true) ctx.accept();
      else ctx.reject(['publickey']);
    });
    conn.on('ready', () => {
      conn.on('session', (acceptSession) => {
        const session = acceptSession();
        const sessionEnv: Record<string, string> = {};
        session.on('env', (accept, reject, info) => {
          if (PROTECTED_ENV.has(info.key)) {
            reject?.();
            return;
          }
          sessionEnv[info.key] = info.val;
          accept?.();
        });
        session.on('pty', (_a, reject) => reject?.());
        session.on('shell', (_a, reject) => reject?.());
        session.on('sftp', (_a, reject) => reject?.());
        session.on('subsystem', (_a, reject) => reject?.());
        session.on('exec', (accept, _reject, info) => {
          const channel = accept();
          if (!channel) return;
          const child = this.runCommand(info.command, { ...sessionEnv, ...this.baseEnv }, channel);
          session.on('signal', (acceptSig, rejectSig, sig) => {
            if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) {
              rejectSig?.();
              return;
            }
            try {
              // The whole process group, so a timed-out command's own children stop too.
              process.kill(-child.pid, `SIG${sig.name}` as NodeJS.Signals);
              acceptSig?.();
            } catch {
              rejectSig?.();
            }
          });
        });
      });
    });
  }

  private runCommand(command: string, env: Record<string, string>, channel: ServerChannel): ChildProcess {
    // detached: each command leads its own process group, so signals and hang-ups can reach the
    // command's children without touching the supervisor.
    const child = spawn('/bin/sh', ['-c', command], { cwd: this.opts.root, env, stdio: 'pipe', detached: true });
    let finished = false;
    let channelClosed = false;

    // One ordered writer for stdout and stderr, with at most one write outstanding. ssh2 1.17's
    // server resumes only one of the two streams when the client opens the SSH window again
    // (an if/else-if in its CHANNEL_WINDOW_ADJUST handler): with both waiting on a full window,
    // the other one waited forever — `head -c 3000000 /dev/zero; echo done >&2` hung about one
    // run in three on a loaded machine. Never letting both wait at once avoids it.
    const queue: { stderr: boolean; data: Buffer }[] = [];
    let queued = 0;
    let writing = false;
    const idle: (() => void)[] = [];
    const pump = () => {
      if (writing || channelClosed) return;
      const next = queue.shift();
      if (!next) {
        for (const resolve of idle.splice(0)) resolve();
        return;
      }
      writing = true;
      (next.stderr ? channel.stderr : channel).write(next.data, () => {
        writing = false;
        queued -= next.data.length;
        if (queued < 1 << 20) {
          child.stdout.resume();
          child.stderr.resume();
        }
        pump();
      });
    };
    const enqueue = (stderr: boolean) => (data: Buffer) => {
      queue.push({ stderr, data });
      queued += data.length;
      // The command's own backpressure: stop reading it while a megabyte waits for the client.
      if (queued >= 1 << 20) {
        child.stdout.pause();
        child.stderr.pause();
      }
      pump();
    };

    const finish = (code: number | null, sig: NodeJS.Signals | null) => {
      if (finished) return;
      finished = true;
      if (channelClosed) return;
      // exit-status goes out at once, bypassing data still queued behind the SSH window: wait
      // until every byte of output was handed to the channel so the client sees it first.
      const done = () => {
        if (channelClosed) return;
        if (sig && RFC4254_SIGNALS.has(sig)) channel.exit(sig.slice(3), false, '');
        // Signals SSH has no name for (SIGBUS, SIGSYS…) are reported the way a shell would.
        else if (sig) channel.exit(128 + (os.constants.signals[sig] ?? 0));
        else channel.exit(code ?? 255);
        channel.end();
      };
      if (!writing && queue.length === 0) done();
      else idle.push(done);
    };

    child.stdin.on('error', () => {}); // EPIPE when the command exits without reading its input
    channel.on('error', (err: Error) => this.log.debug({ err: err.message }, 'ssh channel error'));
    channel.pipe(child.stdin);
    child.stdout.on('data', enqueue(false));
    child.stderr.on('data', enqueue(true));
    child.on('error', (err) => {
      channel.stderr.write(`local-cloud: cannot run command: ${err.message}\n`);
      finish(127, null);
    });
    // 'close' (not 'exit') so every byte the command wrote has been read: the channel closes when
    // the command's stdio does, as with sshd.
    child.on('close', (code, sig) => finish(code, sig));
    channel.on('close', () => {
      channelClosed = true;
      queue.length = 0;
      if (!finished && child.pid !== undefined) {
        // The client went away mid-command (timeout, dropped connection): hang up on it like a
        // terminal would. Jobs started with setsid/nohup are unaffected.
        try {
          process.kill(-child.pid, 'SIGHUP');
        } catch {
          // already gone
        }
        child.stdout.destroy();
        child.stderr.destroy();
      }
    });
    return child;
  }
}
