/**
 * The static provider's contract against real OpenSSH hosts (127.252.x.y:2222): assign, list by
 * tags, metadata, exists, delete (cleanup + back to the pool), pool exhaustion, config errors;
 * plus the SSH layer's reconnect and jump-host paths the provider relies on.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectorError } from '../../src/errors.js';
import { StaticProvider } from '../../src/providers/static/index.js';
import { Ssh2Connector } from '../../src/ssh/connection.js';
import { ensureDirectorKey } from '../../src/ssh/keys.js';
import { fleetAddress, sshdUnavailableReason, startFleetHost, startSshdFleet, stopFleet, type FleetHost } from '../helpers/sshd-fleet.js';

const reason = sshdUnavailableReason();
if (reason) console.log(`skipping static provider tests: ${reason}`);

const req = (index: number, extra: Record<string, string> = {}) => ({
  tags: { director: 'd1', deployment: 'dep', instance_group: 'web', index: String(index), instance_id: `id-${index}`, ...extra },
  az: 'z1',
  azCloudProperties: {},
  vmType: 'small',
  vmTypeCloudProperties: {},
  authorizedKey: '',
});

describe.skipIf(reason !== undefined)('static provider on real sshd', () => {
  const dir = mkdtempSync(join(tmpdir(), 'director-static-it-'));
  const home = join(dir, 'home');
  let hosts: FleetHost[] = [];
  let extra: FleetHost[] = [];
  let key: ReturnType<typeof ensureDirectorKey>;
  const props = (hs: FleetHost[], more: Record<string, unknown> = {}) => ({
    hosts: hs.map((h) => ({ address: h.address, port: h.port, base_dir: h.baseDir })),
    ...more,
  });

  beforeAll(async () => {
    mkdirSync(home, { recursive: true });
    key = ensureDirectorKey(home);
    hosts = await startSshdFleet({ count: 3, prefix: '127.252', authorizedKeys: [key.publicKey], root: join(dir, 'hosts') });
  });
  afterAll(async () => {
    await stopFleet([...hosts, ...extra]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('assigns hosts, lists them by tags, updates metadata, deletes with cleanup, and reports exhaustion', async () => {
    const p = new StaticProvider({ cloud: 'dc1', home, properties: props(hosts) });
    const a = await p.create(req(0));
    const b = await p.create(req(1, { extra: 'x' }));
    expect(a.cid).toBe(`static-${hosts[0]!.address}:2222`);
    expect(a.ips).toEqual([hosts[0]!.address]);
    expect([a.sshHost, a.sshPort, a.baseDir, a.az, a.tags.az]).toEqual([hosts[0]!.address, 2222, hosts[0]!.baseDir, 'z1', 'z1']);
    // pinned on first contact: the key the host really has
    expect(a.hostKeyFingerprint).toBe(hosts[0]!.fingerprint);
    expect(b.cid).not.toBe(a.cid);

    // the assignment is on the host and in <home>/static/dc1.json
    const marker = JSON.parse(readFileSync(join(hosts[0]!.baseDir, '.director-assignment'), 'utf8')) as { tags: Record<string, string> };
    expect(marker.tags.instance_id).toBe('id-0');
    const state = JSON.parse(readFileSync(join(home, 'static', 'dc1.json'), 'utf8')) as { assignments: Record<string, unknown> };
    expect(Object.keys(state.assignments).sort()).toEqual([a.cid, b.cid].sort());

    expect((await p.list({ deployment: 'dep' })).map((v) => v.cid).sort()).toEqual([a.cid, b.cid].sort());
    expect((await p.list({ extra: 'x' })).map((v) => v.cid)).toEqual([b.cid]);
    expect(await p.list({ deployment: 'other' })).toEqual([]);

    await p.setMetadata(a.cid, { role: 'primary' });
    expect((await p.list({ role: 'primary' })).map((v) => v.cid)).toEqual([a.cid]);
    expect(readFileSync(join(hosts[0]!.baseDir, '.director-assignment'), 'utf8')).toContain('"role":"primary"');

    expect(await p.exists(a.cid)).toBe(true);
    expect(await p.exists('static-127.252.99.99:2222')).toBe(false);

    // a third fits, a fourth does not
    const c = await p.create(req(2));
    const err = await p.create(req(3)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DirectorError);
    expect((err as DirectorError).code).toBe('static_pool_exhausted');
    expect((err as DirectorError).message).toContain("cloud 'dc1'");
    expect((err as DirectorError).message).toContain('3 hosts, 3 assigned');
    expect((err as DirectorError).hint).toMatch(/add hosts/);

    // delete: the jobs are stopped (a fake ctl records it) and the base dir removed
    mkdirSync(join(hosts[2]!.baseDir, 'bin'), { recursive: true });
    const stopped = join(dir, 'ctl-stopped');
    writeFileSync(join(hosts[2]!.baseDir, 'bin', 'ctl'), `#!/bin/sh\necho "$1" > ${stopped}\n`, { mode: 0o755 });
    writeFileSync(join(hosts[2]!.dir, 'keep-me'), 'not the director\'s');
    await p.delete(c.cid);
    expect(readFileSync(stopped, 'utf8').trim()).toBe('stop');
    expect(existsSync(hosts[2]!.baseDir)).toBe(false);
    expect(existsSync(join(hosts[2]!.dir, 'keep-me'))).toBe(true);
    expect(await p.exists(c.cid)).toBe(false);
    expect((await p.list({})).map((v) => v.cid)).not.toContain(c.cid);

    // back in the pool
    const again = await p.create(req(3));
    expect(again.cid).toBe(c.cid);

    // idempotent delete of unknown and of already-deleted cids
    await p.delete('static-10.9.9.9:22');
    await p.delete(again.cid);
    await p.delete(again.cid);
    await p.delete(a.cid);
    await p.delete(b.cid);
    expect(await p.list({})).toEqual([]);
  });

  it('never claims a host whose marker names another instance (state file lost)', async () => {
    const h2 = mkdtempSync(join(tmpdir(), 'director-static-home2-'));
    try {
      const p = new StaticProvider({ cloud: 'dc1', home, properties: props(hosts) });
      const a = await p.create(req(10));
      // a second director home without the state file: hosts[0] carries a marker for id-10
      mkdirSync(join(h2, 'keys'), { recursive: true });
      writeFileSync(join(h2, 'keys', 'id_ed25519'), key.privateKey, { mode: 0o600 });
      const q = new StaticProvider({ cloud: 'dc1', home: h2, properties: props(hosts) });
      const b = await q.create(req(11));
      expect(b.cid).not.toBe(a.cid);
      // the occupied host was adopted as assigned, with its marker's tags
      expect((await q.list({ instance_id: 'id-10' })).map((v) => v.cid)).toEqual([a.cid]);
      await q.delete(b.cid);
      await p.delete(a.cid);
    } finally {
      rmSync(h2, { recursive: true, force: true });
    }
  });

  it('validates properties with did-you-mean, naming the cloud and key', () => {
    const make = (properties: Record<string, unknown>) => () => new StaticProvider({ cloud: 'dc1', home, properties });
    expect(make({ hosts: [{ address: '10.0.0.1' }], privat_key: '/k' })).toThrow(/cloud 'dc1' \(type static\): unknown property 'privat_key'; did you mean 'private_key'\?/);
    expect(make({ hosts: [{ adress: '10.0.0.1' }] })).toThrow(/unknown property 'hosts\[0\]\.adress'; did you mean 'address'\?/);
    expect(make({ hosts: [] })).toThrow(/hosts must be a non-empty list/);
    expect(make({ hosts: [{ address: '10.0.0.1', port: 'x' }] })).toThrow(/hosts\[0\]\.port must be a TCP port/);
    expect(make({ hosts: [{ address: '10.0.0.1', host_key: 'abc' }] })).toThrow(/hosts\[0\]\.host_key must be a SHA-256/);
    expect(make({ hosts: [{ address: '10.0.0.1', base_dir: '/' }] })).toThrow(/base_dir must be a directory of the director's own/);
    expect(make({ hosts: [{ address: '10.0.0.1' }, { address: '10.0.0.1', port: 22 }] })).toThrow(/listed twice/);
    expect(make({ hosts: [{ address: '10.0.0.1' }], bastion: { address: '10.0.0.2', usr: 'x' } })).toThrow(/unknown property 'bastion\.usr'; did you mean 'user'\?/);
    expect(make({ hosts: [{ address: '10.0.0.1' }], sudo: 'yes' })).toThrow(/sudo must be true or false/);
  });

  it('SSH: a connection dropped between commands is re-established and the next command sent; one dropped during a command reports ssh_connection_lost', async () => {
    const ssh = new Ssh2Connector();
    const h = hosts[0]!;
    const conn = await ssh.connect({ host: h.address, port: h.port, username: 'root', privateKey: key.privateKey });
    try {
      expect((await conn.exec('echo one')).stdout.trim()).toBe('one');
      // the command kills the sshd process serving this connection: lost while it ran
      const lost = await conn.exec('kill -9 $PPID; sleep 5').catch((e: unknown) => e);
      expect((lost as DirectorError).code).toBe('ssh_connection_lost');
      // next command: the transport is gone before sending, so it reconnects and sends it
      expect((await conn.exec('echo two')).stdout.trim()).toBe('two');
      // a host whose sshd comes back with another key (the old listener's session child still
      // serves us until it is killed) is refused on reconnect
      await h.restart({ newHostKey: true });
      expect((await conn.exec('echo three')).stdout.trim()).toBe('three');
      await conn.exec('kill -9 $PPID').catch(() => undefined);
      const mismatch = await conn.exec('echo four').catch((e: unknown) => e);
      expect((mismatch as DirectorError).code).toBe('ssh_host_key_mismatch');
    } finally {
      conn.close();
    }
  });

  it('bastion: the target is reached through the jump host, and only through it', async () => {
    // jump on 127.252.200.1 logs its direct-tcpip requests (LogLevel DEBUG1);
    // the target on 127.252.200.2 has its own key
    extra = await Promise.all([
      startFleetHost({ index: 100, address: fleetAddress('127.252', 49_750), port: 2222, dir: join(dir, 'jump'), authorizedKeysFile: join(dir, 'hosts', 'authorized_keys'), extraConfig: ['LogLevel DEBUG1'] }),
      startFleetHost({ index: 101, address: fleetAddress('127.252', 49_751), port: 2222, dir: join(dir, 'target'), authorizedKeysFile: join(dir, 'hosts', 'authorized_keys') }),
    ]);
    const [jump, target] = extra as [FleetHost, FleetHost];
    const p = new StaticProvider({
      cloud: 'dc2',
      home,
      properties: { hosts: [{ address: target.address, port: 2222, base_dir: target.baseDir }], bastion: { address: jump.address, port: 2222, user: 'root' } },
    });
    const vm = await p.create(req(0));
    expect(vm.hostKeyFingerprint).toBe(target.fingerprint);
    const state = JSON.parse(readFileSync(join(home, 'static', 'dc2.json'), 'utf8')) as { hostKeys: Record<string, string> };
    expect(state.hostKeys[`bastion ${jump.address}:2222`]).toBe(jump.fingerprint);
    // the jump host forwarded a stream to the target for the marker write
    expect(jump.log()).toMatch(new RegExp(`direct-tcpip.*${target.address.replaceAll('.', '\\.')} port 2222|target ${target.address.replaceAll('.', '\\.')} port 2222`));
    expect(existsSync(join(target.baseDir, '.director-assignment'))).toBe(true);

    // the jump host is the only way: with it down, the target (still up) is unreachable
    await jump.stop();
    const err = await p.setMetadata(vm.cid, { x: '1' }).catch((e: unknown) => e);
    expect((err as DirectorError).code).toBe('ssh_unreachable');
    expect((err as DirectorError).message).toContain(`via jump host ${jump.address}:2222`);
    await jump.restart();
    await p.delete(vm.cid);
    expect(existsSync(target.baseDir)).toBe(false);
  });
});
