/**
 * A real OpenSSH sshd for tests, on 127.0.0.1 and a free high port, with everything (host
 * key, authorized_keys, pid file) in a temp dir. OpenSSH defaults otherwise, notably
 * MaxStartups 10:30:100 and MaxSessions 10, which are what the director must live with.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';

export const SSHD_PATH = '/usr/sbin/sshd';

/** Why real-sshd tests cannot run here, or undefined when they can. */
export function sshdUnavailableReason(): string | undefined {
  if (!existsSync(SSHD_PATH)) return `${SSHD_PATH} not found (install openssh-server to run these tests)`;
  if (!existsSync('/usr/bin/ssh-keygen')) return '/usr/bin/ssh-keygen not found (install openssh-client)';
  return undefined;
}

export interface Sshd {
  host: string;
  port: number;
  username: string;
  /** path of the private host key; `${hostKeyPath}.pub` holds the public one */
  hostKeyPath: string;
  /** `SHA256:…` as printed by `ssh-keygen -lf` for the host key */
  hostKeyFingerprint: string;
  /** everything sshd wrote to stderr so far (-e), for failure messages */
  log(): string;
  stop(): Promise<void>;
}

async function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

export async function startSshd(opts: { authorizedKeys: string[]; host?: string; extraConfig?: string[] }): Promise<Sshd> {
  const host = opts.host ?? '127.0.0.1';
  const dir = mkdtempSync(join(tmpdir(), 'director-sshd-'));
  const hostKeyPath = join(dir, 'ssh_host_ed25519_key');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'test-sshd', '-f', hostKeyPath]);
  const hostKeyFingerprint = execFileSync('ssh-keygen', ['-lf', `${hostKeyPath}.pub`], { encoding: 'utf8' }).split(' ')[1]!;
  writeFileSync(join(dir, 'authorized_keys'), opts.authorizedKeys.map((k) => `${k.trim()}\n`).join(''), { mode: 0o600 });
  // sshd refuses to start without its privilege-separation directory.
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });

  // The port is picked then released, so another process can take it in between; sshd then
  // exits with "Bind ... failed" and we try another.
  let lastLog = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort(host);
    const config = join(dir, 'sshd_config');
    writeFileSync(
      config,
      [
        `ListenAddress ${host}:${port}`,
        `HostKey ${hostKeyPath}`,
        `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
        `PidFile ${join(dir, 'sshd.pid')}`,
        'StrictModes no',
        'UsePAM no',
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        ...(opts.extraConfig ?? []),
        '',
      ].join('\n'),
    );
    const child = spawn(SSHD_PATH, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      log += d;
    });
    const up = await new Promise<boolean>((resolve) => {
      const deadline = setTimeout(() => resolve(false), 10_000);
      const check = () => {
        if (log.includes(`Server listening on ${host} port ${port}`)) {
          clearTimeout(deadline);
          child.stderr!.off('data', check);
          child.off('exit', onExit);
          resolve(true);
        }
      };
      const onExit = () => {
        clearTimeout(deadline);
        resolve(false);
      };
      child.stderr!.on('data', check);
      child.once('exit', onExit);
    });
    if (up) return handle(child, host, port, hostKeyPath, hostKeyFingerprint, dir, () => log);
    lastLog = log;
    await stopChild(child);
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error(`sshd did not start:\n${lastLog}`);
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

function handle(child: ChildProcess, host: string, port: number, hostKeyPath: string, hostKeyFingerprint: string, dir: string, log: () => string): Sshd {
  return {
    host,
    port,
    username: userInfo().username,
    hostKeyPath,
    hostKeyFingerprint,
    log,
    async stop() {
      // SIGTERM to the listener; per-connection children exit when their clients go away.
      await stopChild(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Host-key contents for assertions that want the raw `.pub` line. */
export function readHostPublicKey(sshd: Sshd): string {
  return readFileSync(`${sshd.hostKeyPath}.pub`, 'utf8').trim();
}
