/**
 * The local cloud end to end with real processes: a detached supervisor, real SSH (ssh2 client),
 * real jobs on loopback addresses. Needs the build output (`npm run build`): the supervisor runs
 * from dist/local-cloud/main.js.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCloudClient, type LocalVmRecord } from '../../src/local-cloud/client.js';
import { killVmProcesses } from '../../src/local-cloud/processes.js';
import { isProcessAlive } from '../../src/local-cloud/protocol.js';
import { generateHostKey, subnetForHome } from '../../src/local-cloud/supervisor.js';
import { LocalProvider } from '../../src/providers/local/index.js';
import type { VmRequest } from '../../src/providers/provider.js';

const { Client } = ssh2;
const execFileP = promisify(execFile);
const distClient = fileURLToPath(new URL('../../dist/local-cloud/client.js', import.meta.url));

const JOB_PORT = 18080;
// A tiny HTTP job that answers with the cid of the VM it runs on.
const JOB_SOURCE = `require('http').createServer((q, s) => s.end(process.env.DIRECTOR_LOCAL_VM)).listen(+process.argv[3], process.argv[2]);\n`;
const startJob = (ip: string) => `setsid nohup node job.cjs ${ip} ${JOB_PORT} >/dev/null 2>&1 </dev/null &`;

interface ExecOut {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  hostKeyFingerprint: string;
}

function fingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

function connect(vm: LocalVmRecord, privateKey: string): Promise<{ conn: InstanceType<typeof Client>; fp: string }> {
  return new Promise((resolve, reject) => {
    const conn = new Client();
    let fp = '';
    conn
      .on('ready', () => resolve({ conn, fp }))
      .on('error', reject)
      .connect({
        host: vm.ip,
        port: vm.ssh_port,
        username: vm.ssh_user,
        privateKey,
        readyTimeout: 10_000,
        hostVerifier: (key: Buffer) => {
          fp = fingerprint(key);
          return true;
        },
      });
  });
}

async function sshExec(
  vm: LocalVmRecord,
  privateKey: string,
  command: string,
  opts: { stdin?: string | Buffer; env?: Record<string, string> } = {},
): Promise<ExecOut> {
  const { conn, fp } = await connect(vm, privateKey);
  try {
    return await new Promise<ExecOut>((resolve, reject) => {
      conn.exec(command, { env: opts.env ?? {} }, (err, stream) => {
        if (err) return reject(err);
        const out: Buffer[] = [];
        const errOut: Buffer[] = [];
        let code: number | null = null;
        let signal: string | null = null;
        stream.on('data', (d: Buffer) => out.push(d));
        stream.stderr.on('data', (d: Buffer) => errOut.push(d));
        stream.on('exit', (c: number | null, s?: string) => {
          code = c;
          signal = s ?? null;
        });
        stream.on('close', () =>
          resolve({
            code,
            signal,
            stdout: Buffer.concat(out).toString(),
            stderr: Buffer.concat(errOut).toString(),
            hostKeyFingerprint: fp,
          }),
        );
        stream.end(opts.stdin ?? undefined);
      });
    });
  } finally {
    conn.end();
  }
}

function httpGet(ip: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: ip, port, path: '/', agent: false, timeout: 2000 }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve(body));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

async function eventually<T>(fn: () => Promise<T>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** pids of supervisors running for `home` (their command line names it). */
function supervisorsFor(home: string): number[] {
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const args = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (args.some((a) => a.endsWith('local-cloud/main.js')) && args.includes(home) && isProcessAlive(Number(name))) {
        pids.push(Number(name));
      }
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

function vmProcesses(cid: string): number[] {
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (fs.readFileSync(`/proc/${name}/environ`, 'utf8').split('\0').includes(`DIRECTOR_LOCAL_VM=${cid}`)) pids.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return pids.filter(isProcessAlive);
}

const homes: string[] = [];
function tempHome(): string {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'director-lc-'));
  homes.push(home);
  return home;
}

// Not utils.generateKeyPairSync directly: it emits a malformed key about 1 time in 256.
const key = generateHostKey().keys;
const otherKey = generateHostKey().keys;

describe('local cloud addresses', () => {
  it('derives a per-home subnet, overridable', () => {
    const a = subnetForHome('/tmp/home-a', '');
    expect(a).toMatch(/^127\.(\d+)$/);
    const b = Number(a.split('.')[1]);
    expect(b).toBeGreaterThanOrEqual(2);
    expect(b).toBeLessThanOrEqual(250);
    expect(subnetForHome('/tmp/home-a', '')).toBe(a);
    expect(subnetForHome('/tmp/home-a', '127.42')).toBe('127.42');
    expect(() => subnetForHome('/tmp/home-a', '10.1')).toThrow(/DIRECTOR_LOCAL_SUBNET/);
  });
});

describe('local cloud', () => {
  const home = tempHome();
  let cloud: LocalCloudClient;
  let vms: LocalVmRecord[] = [];

  beforeAll(async () => {
    cloud = await LocalCloudClient.ensure(home);
  });

  afterAll(async () => {
    for (const h of homes) {
      const c = await LocalCloudClient.connectIfRunning(h);
      await c?.stop();
      // A test that failed between killing a supervisor and starting the next leaves jobs behind.
      try {
        const state = JSON.parse(fs.readFileSync(path.join(h, 'local-cloud', 'state.json'), 'utf8')) as { vms: { cid: string }[] };
        await killVmProcesses(new Set(state.vms.map((v) => v.cid)), { graceMs: 1000 });
      } catch {
        // no state: no VMs
      }
    }
    for (const h of homes) fs.rmSync(h, { recursive: true, force: true });
  });

  it('starts one supervisor per home and reuses it', async () => {
    expect(isProcessAlive(cloud.pid)).toBe(true);
    const again = await LocalCloudClient.ensure(home);
    expect(again.pid).toBe(cloud.pid);
    expect((await again.status()).pid).toBe(cloud.pid);
    const info = fs.statSync(path.join(home, 'local-cloud', 'supervisor.json'));
    expect(info.mode & 0o777).toBe(0o600);
    expect(supervisorsFor(home)).toEqual([cloud.pid]);
  });

  it('ends with one supervisor when several processes start it at once', async () => {
    const home2 = tempHome();
    // A start lock left behind by a CLI that died must not block anyone.
    const dead = await execFileP('sh', ['-c', 'echo $$']).then((r) => r.stdout.trim());
    fs.mkdirSync(path.join(home2, 'local-cloud'), { recursive: true });
    fs.writeFileSync(path.join(home2, 'local-cloud', 'start.lock'), `${dead} 0123456789abcdef`);
    const script = `import(${JSON.stringify(distClient)}).then(m => m.LocalCloudClient.ensure(process.argv[1])).then(c => console.log(c.pid))`;
    const child = () => execFileP(process.execPath, ['-e', script, home2]).then((r) => Number(r.stdout.trim()));
    const pids = await Promise.all([
      LocalCloudClient.ensure(home2).then((c) => c.pid),
      LocalCloudClient.ensure(home2).then((c) => c.pid),
      child(),
      child(),
    ]);
    expect(new Set(pids).size).toBe(1);
    expect(supervisorsFor(home2)).toEqual([pids[0]]);
    expect(fs.existsSync(path.join(home2, 'local-cloud', 'start.lock'))).toBe(false);
    const c = await LocalCloudClient.connectIfRunning(home2);
    await c!.stop();
    expect(isProcessAlive(pids[0]!)).toBe(false);
    expect(await LocalCloudClient.connectIfRunning(home2)).toBeNull();
  });

  it('creates VMs with their own address, root and host key, reachable over SSH', async () => {
    vms = await Promise.all(
      ['a', 'b', 'c'].map((name) => cloud.createVm({ tags: { deployment: 'd1', name }, authorizedKeys: [key.public] })),
    );
    expect(new Set(vms.map((v) => v.ip)).size).toBe(3);
    expect(new Set(vms.map((v) => v.host_key_fingerprint)).size).toBe(3);
    for (const vm of vms) {
      expect(vm.cid).toMatch(/^local-[0-9a-f]{8}$/);
      expect(vm.ip).toMatch(/^127\.\d+\.\d+\.\d+$/);
      expect(vm.state).toBe('running');
      expect(vm.ssh_user).toBe(os.userInfo().username);
      const r = await sshExec(vm, key.private, 'pwd; echo "$HOME"; echo "$DIRECTOR_LOCAL_VM"');
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`${vm.root}\n${vm.root}\n${vm.cid}\n`);
      expect(r.hostKeyFingerprint).toBe(vm.host_key_fingerprint);
    }
  });

  it('passes exit codes, signals, stderr, stdin, env and large outputs through', async () => {
    const vm = vms[0]!;
    const r = await sshExec(vm, key.private, 'echo out; echo err >&2; exit 3');
    expect(r).toMatchObject({ code: 3, stdout: 'out\n', stderr: 'err\n' });

    // ssh2's client reports the wire name TERM as SIGTERM.
    expect((await sshExec(vm, key.private, 'kill -TERM $$')).signal).toBe('SIGTERM');
    expect((await sshExec(vm, key.private, 'kill -BUS $$')).code).toBe(128 + os.constants.signals.SIGBUS);

    const big = Buffer.alloc(3 * 1024 * 1024, 'x');
    expect((await sshExec(vm, key.private, 'cat > upload && wc -c < upload', { stdin: big })).stdout.trim()).toBe(String(big.length));
    expect((await sshExec(vm, key.private, 'cat', { stdin: 'hello\n' })).stdout).toBe('hello\n');

    const out = await sshExec(vm, key.private, 'head -c 3000000 /dev/zero; echo done >&2');
    expect(out.stdout.length).toBe(3_000_000);
    expect(out).toMatchObject({ code: 0, stderr: 'done\n' });

    const env = await sshExec(vm, key.private, 'echo "$FOO $HOME $DIRECTOR_LOCAL_VM"', {
      env: { FOO: 'bar', HOME: '/elsewhere', DIRECTOR_LOCAL_VM: 'spoofed' },
    });
    expect(env.stdout).toBe(`bar ${vm.root} ${vm.cid}\n`);
  });

  it('hangs up on a command whose client goes away; forwards signal requests', async () => {
    const vm = vms[2]!;
    const { conn } = await connect(vm, key.private);
    const marker = `sleep 31.${Date.now() % 1000}`;
    const code = await new Promise<unknown>((resolve, reject) => {
      conn.exec(`${marker}; echo never`, (err, stream) => {
        if (err) return reject(err);
        stream.on('exit', (c: number | null, sig?: string) => resolve(sig ?? c));
        stream.on('data', () => {});
        setTimeout(() => stream.signal('TERM'), 200);
      });
    });
    expect(code).toBe('SIGTERM');

    await new Promise<void>((resolve, reject) => {
      conn.exec(marker, (err) => (err ? reject(err) : setTimeout(resolve, 200)));
    });
    expect(vmProcesses(vm.cid).length).toBeGreaterThan(0);
    conn.end();
    await eventually(async () => expect(vmProcesses(vm.cid)).toEqual([]));
  });

  it('refuses wrong keys, wrong users, pty, shell and sftp', async () => {
    const vm = vms[0]!;
    await expect(connect(vm, otherKey.private)).rejects.toThrow(/authentication/i);
    await expect(connect({ ...vm, ssh_user: 'nobody-else' }, key.private)).rejects.toThrow(/authentication/i);
    const { conn } = await connect(vm, key.private);
    try {
      await expect(new Promise((res, rej) => conn.shell((err, s) => (err ? rej(err) : res(s))))).rejects.toThrow();
      await expect(new Promise((res, rej) => conn.sftp((err, s) => (err ? rej(err) : res(s))))).rejects.toThrow();
      await expect(new Promise((res, rej) => conn.exec('true', { pty: true }, (err, s) => (err ? rej(err) : res(s))))).rejects.toThrow();
    } finally {
      conn.end();
    }
  });

  it('keeps detached jobs running after the channel closes; VMs share a port on their own IPs', async () => {
    for (const vm of vms.slice(0, 2)) {
      await sshExec(vm, key.private, 'cat > job.cjs', { stdin: JOB_SOURCE });
      const r = await sshExec(vm, key.private, startJob(vm.ip));
      expect(r.code).toBe(0);
    }
    for (const vm of vms.slice(0, 2)) {
      expect(await eventually(() => httpGet(vm.ip, JOB_PORT))).toBe(vm.cid);
    }
  });

  it('lists by tags and merges tags', async () => {
    expect((await cloud.listVms({ deployment: 'd1' })).map((v) => v.cid).sort()).toEqual(vms.map((v) => v.cid).sort());
    expect((await cloud.listVms({ deployment: 'd1', name: 'b' })).map((v) => v.cid)).toEqual([vms[1]!.cid]);
    expect(await cloud.listVms({ deployment: 'other' })).toEqual([]);
    const updated = await cloud.setTags(vms[1]!.cid, { role: 'web', name: 'b2' });
    expect(updated.tags).toEqual({ deployment: 'd1', name: 'b2', role: 'web' });
    expect((await cloud.getVm(vms[1]!.cid))!.tags).toEqual(updated.tags);
    expect(await cloud.getVm('local-00000000')).toBeNull();
    await expect(cloud.setTags('local-00000000', { a: 'b' })).rejects.toMatchObject({ code: 'local_cloud_vm_not_found' });
    await expect(cloud.createVm({ authorizedKeys: [key.private] })).rejects.toMatchObject({ code: 'local_cloud_bad_request' });
    await expect(cloud.createVm({ authorizedKeys: ['ssh-ed25519 garbage'] })).rejects.toMatchObject({ code: 'local_cloud_bad_request' });
  });

  it('powers VMs off on stop and boots them (rc.local) on the next start', async () => {
    const vm = vms[0]!;
    await sshExec(vm, key.private, 'cat > etc/rc.local && chmod +x etc/rc.local', {
      stdin: `#!/bin/sh\n${startJob(vm.ip)}\necho booted >> var/log/boots\n`,
    });
    const oldPid = cloud.pid;
    await cloud.stop();
    expect(isProcessAlive(oldPid)).toBe(false);
    // Powered off: the jobs of both VMs are gone.
    await expect(httpGet(vm.ip, JOB_PORT)).rejects.toThrow();
    await expect(httpGet(vms[1]!.ip, JOB_PORT)).rejects.toThrow();
    expect(vmProcesses(vm.cid)).toEqual([]);

    cloud = await LocalCloudClient.ensure(home);
    expect(cloud.pid).not.toBe(oldPid);
    const after = await cloud.listVms();
    const byCid = (cid: string) => after.find((v) => v.cid === cid)!;
    for (const v of vms) {
      expect(byCid(v.cid)).toMatchObject({ ip: v.ip, host_key_fingerprint: v.host_key_fingerprint, state: 'running' });
    }
    expect(byCid(vms[1]!.cid).tags.role).toBe('web');
    const r = await sshExec(vm, key.private, 'echo hi');
    expect(r).toMatchObject({ code: 0, stdout: 'hi\n', hostKeyFingerprint: vm.host_key_fingerprint });
    // rc.local brought VM a's job back; VM b had none.
    expect(await eventually(() => httpGet(vm.ip, JOB_PORT))).toBe(vm.cid);
    expect(fs.readFileSync(path.join(vm.root, 'var/log/boots'), 'utf8')).toBe('booted\n');
    await expect(httpGet(vms[1]!.ip, JOB_PORT)).rejects.toThrow();
  });

  it('keeps jobs running when the supervisor dies; the next one reboots the VMs cleanly', async () => {
    const vm = vms[0]!;
    const oldPid = cloud.pid;
    process.kill(oldPid, 'SIGKILL');
    await eventually(async () => expect(isProcessAlive(oldPid)).toBe(false));
    expect(await httpGet(vm.ip, JOB_PORT)).toBe(vm.cid);

    cloud = await LocalCloudClient.ensure(home);
    expect(cloud.pid).not.toBe(oldPid);
    // The orphaned job was killed before rc.local started it again: exactly one is left.
    expect(await eventually(() => httpGet(vm.ip, JOB_PORT))).toBe(vm.cid);
    await eventually(async () => expect(fs.readFileSync(path.join(vm.root, 'var/log/boots'), 'utf8')).toBe('booted\nbooted\n'));
    const jobs = vmProcesses(vm.cid).filter((pid) => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('job.cjs'));
    expect(jobs).toHaveLength(1);
  });

  it('deletes a VM: kills its processes, removes its root; deleting again succeeds', async () => {
    const vm = vms[0]!;
    expect(vmProcesses(vm.cid).length).toBeGreaterThan(0);
    await cloud.deleteVm(vm.cid);
    expect(vmProcesses(vm.cid)).toEqual([]);
    await expect(httpGet(vm.ip, JOB_PORT)).rejects.toThrow();
    expect(fs.existsSync(vm.root)).toBe(false);
    expect(await cloud.getVm(vm.cid)).toBeNull();
    await expect(connect(vm, key.private)).rejects.toThrow();
    await cloud.deleteVm(vm.cid);
    const state = JSON.parse(fs.readFileSync(path.join(home, 'local-cloud', 'state.json'), 'utf8')) as { vms: { cid: string }[] };
    expect(state.vms.map((v) => v.cid)).not.toContain(vm.cid);
    expect(fs.statSync(path.join(home, 'local-cloud', 'state.json')).mode & 0o777).toBe(0o600);
  });

  it('LocalProvider: create, list by tags, setMetadata, exists, idempotent delete', async () => {
    const provider = new LocalProvider({ cloud: 'local', home });
    const req = (index: string): VmRequest => ({
      tags: { director: 'test', deployment: 'p1', instance_group: 'web', index },
      az: 'z1',
      azCloudProperties: {},
      vmType: 'small',
      vmTypeCloudProperties: {},
      authorizedKey: key.public,
    });
    const [a, b] = await Promise.all([provider.create(req('0')), provider.create(req('1'))]);
    expect(a).toMatchObject({ cloud: 'local', az: 'z1', state: 'running', sshHost: a!.ips[0], sshPort: Number(process.env.DIRECTOR_LOCAL_SSH_PORT ?? 2222) });
    expect(a!.tags).toMatchObject({ deployment: 'p1', index: '0', az: 'z1' });
    expect(a!.hostKeyFingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    const listed = await provider.list({ deployment: 'p1', instance_group: 'web' });
    expect(listed.map((v) => v.cid).sort()).toEqual([a!.cid, b!.cid].sort());
    expect((await provider.list({ deployment: 'p1', index: '1' })).map((v) => v.cid)).toEqual([b!.cid]);
    await provider.setMetadata(a!.cid, { index: '7' });
    expect((await provider.list({ deployment: 'p1', index: '7' })).map((v) => v.cid)).toEqual([a!.cid]);
    expect(await provider.exists(a!.cid)).toBe(true);
    await provider.delete(a!.cid);
    expect(await provider.exists(a!.cid)).toBe(false);
    await provider.delete(a!.cid);
    await provider.delete('local-deadbeef');
    expect((await provider.list({ deployment: 'p1' })).map((v) => v.cid)).toEqual([b!.cid]);
    await provider.close();
  });
});
