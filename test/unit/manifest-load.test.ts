import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { DirectorError, isDirectorError } from '../../src/errors.js';
import { loadDeployment } from '../../src/manifest/load.js';
import { BASE_MANIFEST, makeProject } from '../fixtures/manifest/project.js';

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/manifest');

function errorOf(fn: () => unknown): DirectorError {
  try {
    fn();
  } catch (e) {
    if (isDirectorError(e)) return e;
    throw e;
  }
  throw new Error('expected a DirectorError');
}

/** Loads BASE_MANIFEST with `edit` applied and returns the error it fails with. */
function manifestError(manifest: string, files: Record<string, string | null> = {}): DirectorError {
  const p = makeProject({ 'deployments/hello.yml': manifest, ...files });
  return errorOf(() => loadDeployment(p.manifest, {}));
}

describe('loadDeployment: a valid manifest', () => {
  const manifestPath = path.join(fixtures, 'basic/deployments/hello.yml');
  const d = loadDeployment(manifestPath, { vars: { greeting: 'hello there' } });

  it('normalises the update block: percent, numeric string, ranges, single int, 50_000', () => {
    expect(d.manifest.update).toEqual({
      canaries: { kind: 'abs', value: 1 },
      maxInFlight: { kind: 'pct', value: 25 },
      canaryWatchTime: { minMs: 1000, maxMs: 30000 },
      // a single number: wait that long, then check once (BOSH's meaning)
      updateWatchTime: { minMs: 5000, maxMs: 5000 },
      serial: false,
      vmStrategy: 'delete-create',
      autoRollback: true,
      maxFailures: 2,
      progressDeadlineMs: 50000,
    });
  });

  it('applies an instance group update key by key', () => {
    const worker = d.manifest.instanceGroups.find((g) => g.name === 'worker')!;
    expect(worker.update).toEqual({ ...d.manifest.update, maxInFlight: { kind: 'abs', value: 2 } });
    expect(d.manifest.instanceGroups[0]!.update).toEqual(d.manifest.update);
  });

  it('keeps the version text and resolves the release path from the manifest directory', () => {
    expect(d.manifest.releases).toEqual([
      { name: 'hello', path: path.join(fixtures, 'basic/releases/hello'), version: '621.740' },
    ]);
  });

  it('normalises instance groups, with vars substituted', () => {
    expect(d.manifest.instanceGroups[0]).toMatchObject({
      name: 'web',
      instances: 4,
      azs: ['z1', 'z2'],
      vmType: 'small',
      jobs: [{ name: 'web', release: 'hello', properties: { port: 8080, greeting: 'hello there' } }],
      health: ['http-root'],
    });
    expect(d.manifest.instanceGroups[1]!.jobs[0]!.properties).toEqual({});
    expect(d.manifest.instanceGroups[1]!.health).toEqual([]);
    expect(d.vars).toEqual([{ name: 'greeting', value: 'hello there' }]);
  });

  it('normalises the cloud-config found next to the manifest', () => {
    expect(d.cloudConfigFile).toBe(path.join(fixtures, 'basic/deployments/cloud-config.yml'));
    expect(d.manifestFile).toBe(manifestPath);
    expect(d.cloudConfig.clouds).toEqual([
      { name: 'local', type: 'local', properties: {} },
      { name: 'aws-prod', type: 'aws', properties: { region: 'us-east-1', subnet_id: 'subnet-123' } },
    ]);
    expect(d.cloudConfig.azs[2]).toEqual({ name: 'us-east-1a', cloud: 'aws-prod', cloudProperties: {} });
    expect(d.cloudConfig.vmTypes).toEqual([
      { name: 'small', cloudProperties: { instance_type: 't3.small', machine_type: 'e2-small' } },
    ]);
    expect(d.warnings).toEqual([]);
  });

  it('fills the defaults when there is no update block', () => {
    const p = makeProject();
    const m = loadDeployment(p.manifest, {}).manifest;
    expect(m.update).toEqual({
      canaries: { kind: 'abs', value: 1 },
      maxInFlight: { kind: 'abs', value: 1 },
      canaryWatchTime: { minMs: 0, maxMs: 30000 },
      updateWatchTime: { minMs: 0, maxMs: 30000 },
      serial: true,
      vmStrategy: 'delete-create',
      autoRollback: true,
      maxFailures: 0,
      progressDeadlineMs: undefined,
    });
    expect(m.releases[0]!.version).toBeUndefined();
  });

  it('accepts the other forms of counts, watch times and durations', () => {
    const m = loadDeployment(
      makeProject({
        'deployments/hello.yml': `${BASE_MANIFEST}update:
  canaries: "2"
  max_in_flight: 100%
  canary_watch_time: "1_000 - 60_000"
  update_watch_time: "2000"
  progress_deadline: 1m30s
  vm_strategy: create-swap-delete
  max_failures: 1_0
`,
      }).manifest,
      {},
    ).manifest;
    expect(m.update).toMatchObject({
      canaries: { kind: 'abs', value: 2 },
      maxInFlight: { kind: 'pct', value: 100 },
      canaryWatchTime: { minMs: 1000, maxMs: 60000 },
      updateWatchTime: { minMs: 2000, maxMs: 2000 },
      progressDeadlineMs: 90_000,
      vmStrategy: 'create-swap-delete',
      maxFailures: 10,
    });
  });

  it('uses --cloud-config when given', () => {
    const p = makeProject({ 'deployments/cloud-config.yml': null, 'other/cc.yml': 'azs: [{name: z1, cloud: l}, {name: z2, cloud: l}]\nclouds: [{name: l, type: sim}]\nvm_types: [{name: small}]\n' });
    const d2 = loadDeployment(p.manifest, { cloudConfigPath: p.file('other/cc.yml') });
    expect(d2.cloudConfig.clouds).toEqual([{ name: 'l', type: 'sim', properties: {} }]);
  });
});

describe('loadDeployment: files', () => {
  it('names a missing manifest', () => {
    const e = errorOf(() => loadDeployment('/nonexistent/hello.yml', {}));
    expect(e.code).toBe('file_not_found');
    expect(e.errorClass).toBe('user');
    expect(e.message).toContain('/nonexistent/hello.yml');
    expect(e.hint).toBeTruthy();
  });

  it('names both ways to give a cloud-config when there is none', () => {
    const p = makeProject({ 'deployments/cloud-config.yml': null });
    const e = errorOf(() => loadDeployment(p.manifest, {}));
    expect(e.code).toBe('cloud_config_missing');
    expect(e.message).toContain(p.file('deployments/cloud-config.yml'));
    expect(e.hint).toContain('--cloud-config');
  });

  it('reports a YAML syntax error with file:line:col', () => {
    const e = manifestError('name: hello\nreleases:\n  - name: a\n   path: b\ninstance_groups: []\n');
    expect(e.code).toBe('manifest_yaml');
    expect(e.message).toMatch(/hello\.yml:4:\d+: /);
    expect(e.location).toMatchObject({ line: 4 });
    expect(e.location!.file).toMatch(/hello\.yml$/);
  });

  it('reports a duplicate key as a YAML error', () => {
    const e = manifestError(BASE_MANIFEST.replace('name: hello\n', 'name: hello\nname: again\n'));
    expect(e.code).toBe('manifest_yaml');
    expect(e.message).toMatch(/hello\.yml:2:1: /);
  });
});

describe('loadDeployment: schema errors', () => {
  it('names file, line and field of a wrong type', () => {
    const e = manifestError(BASE_MANIFEST.replace('instances: 2', 'instances: many'));
    expect(e.code).toBe('manifest_invalid');
    expect(e.errorClass).toBe('user');
    expect(e.message).toMatch(/hello\.yml:7:14: instance_groups\[0\]\.instances: must be a whole number >= 0, got 'many'$/);
    expect(e.location).toMatchObject({ line: 7, column: 14, field: 'instance_groups[0].instances' });
    expect(e.hint).toBeTruthy();
  });

  it('reports every problem at once, one line each, top to bottom', () => {
    const e = manifestError(
      BASE_MANIFEST.replace('instances: 2', 'instances: -1')
        .replace('vm_type: small', 'vm_type: [small]')
        .replace('name: hello\n', 'name: "bad name"\n'),
    );
    const lines = e.message.split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/:1:7: name: must start with/);
    expect(lines[1]).toMatch(/:7:14: instance_groups\[0\]\.instances: must be >= 0, got -1/);
    expect(lines[2]).toMatch(/:9:12: instance_groups\[0\]\.vm_type: must be a string, got a list/);
  });

  it('points a missing required key at its map', () => {
    const e = manifestError(BASE_MANIFEST.replace('  vm_type: small\n', ''));
    expect(e.message).toMatch(/hello\.yml:6:3: instance_groups\[0\]\.vm_type: is required/);
  });

  it('suggests the right key for an unknown one', () => {
    const e = manifestError(`${BASE_MANIFEST}update:\n  max_inflight: 2\n`);
    expect(e.message).toMatch(/hello\.yml:14:3: update\.max_inflight: unknown key 'max_inflight'; did you mean 'max_in_flight'\?/);
  });

  it('lists the valid keys when nothing is close', () => {
    const e = manifestError(`${BASE_MANIFEST}colour: blue\n`);
    expect(e.message).toContain("unknown key 'colour'; valid keys: name, releases, update, instance_groups");
  });

  it('accepts BOSH keys it does not support yet, with a warning', () => {
    const p = makeProject({
      'deployments/hello.yml': `${BASE_MANIFEST.replace('  vm_type: small\n', '  vm_type: small\n  networks: [{name: default}]\n')}stemcells:\n- alias: default\n`,
      'deployments/cloud-config.yml': `${'azs: [{name: z1, cloud: l}, {name: z2, cloud: l}]\nclouds: [{name: l, type: local}]\nvm_types: [{name: small}]\n'}compilation: {workers: 2}\n`,
    });
    const d = loadDeployment(p.manifest, {});
    expect(d.warnings).toEqual([
      `${p.manifest}:10: 'networks' is not supported yet and is ignored`,
      `${p.manifest}:14: 'stemcells' is not supported yet and is ignored`,
      `${p.file('deployments/cloud-config.yml')}:4: 'compilation' is not supported yet and is ignored`,
    ]);
  });

  it('rejects serial: "false" with a hint to drop the quotes', () => {
    const e = manifestError(`${BASE_MANIFEST}update:\n  serial: "false"\n`);
    expect(e.message).toMatch(/:14:11: update\.serial: must be a boolean, not a string, got 'false'/);
    expect(e.hint).toContain('write false without quotes');
  });

  it('rejects a watch time whose low end is above its high end', () => {
    const e = manifestError(`${BASE_MANIFEST}update:\n  canary_watch_time: 30000-1000\n`);
    expect(e.message).toContain('update.canary_watch_time: LOW must not be greater than HIGH');
  });

  it('rejects max_in_flight of 0 and of more than 100%', () => {
    expect(manifestError(`${BASE_MANIFEST}update:\n  max_in_flight: 0\n`).message).toContain('update.max_in_flight: must be >= 1');
    expect(manifestError(`${BASE_MANIFEST}update:\n  max_in_flight: 150%\n`).message).toContain(
      'must be a percentage from 1% to 100%',
    );
  });

  it('names the line of an unknown release, with the releases there are', () => {
    const e = manifestError(BASE_MANIFEST.replace('release: hello', 'release: helo'));
    expect(e.message).toMatch(
      /hello\.yml:12:14: instance_groups\[0\]\.jobs\[0\]\.release: unknown release 'helo'; releases in this manifest: hello; did you mean 'hello'\?/,
    );
  });

  it('names the line of an unknown az and vm_type', () => {
    const e = manifestError(BASE_MANIFEST.replace('[z1, z2]', '[z1, z9]').replace('vm_type: small', 'vm_type: large'));
    const lines = e.message.split('\n');
    expect(lines[0]).toMatch(/hello\.yml:8:13: instance_groups\[0\]\.azs\[1\]: unknown az 'z9'; azs in .*cloud-config\.yml: z1, z2; did you mean 'z1'\?/);
    expect(lines[1]).toMatch(/hello\.yml:9:12: instance_groups\[0\]\.vm_type: unknown vm_type 'large'; vm_types in .*: small$/);
  });

  it('requires at least one az', () => {
    expect(manifestError(BASE_MANIFEST.replace('[z1, z2]', '[]')).message).toContain('instance_groups[0].azs: must list at least 1 entry');
  });

  it('rejects duplicate instance group and job names', () => {
    const twice = `${BASE_MANIFEST}  - name: web\n    release: hello\n${BASE_MANIFEST.slice(BASE_MANIFEST.indexOf('- name: web'))}`;
    const lines = manifestError(twice).message.split('\n');
    expect(lines).toEqual([
      expect.stringMatching(/:13:11: instance_groups\[0\]\.jobs\[1\]\.name: duplicate job name 'web'; also used by instance_groups\[0\]\.jobs\[0\]$/),
      expect.stringMatching(/:15:9: instance_groups\[1\]\.name: duplicate instance group name 'web'; also used by instance_groups\[0\]$/),
    ]);
  });

  it('points at the path of a release directory that does not exist', () => {
    const e = manifestError(BASE_MANIFEST.replace('../releases/hello', '../releases/nope'));
    expect(e.message).toMatch(/hello\.yml:4:9: releases\[0\]\.path: release directory '\.\.\/releases\/nope' \(.*releases\/nope\) does not exist/);
    const noSpec = manifestError(BASE_MANIFEST, { 'releases/hello/release.yml': null, 'releases/hello/jobs/.keep': '' });
    expect(noSpec.message).toMatch(/releases\[0\]\.path: release directory .* has no release\.yml/);
  });

  it('checks job names against the release', () => {
    const e = manifestError(BASE_MANIFEST.replace('  - name: web\n', '  - name: wbe\n'));
    expect(e.message).toMatch(/:11:11: instance_groups\[0\]\.jobs\[0\]\.name: unknown job 'wbe'; jobs in release 'hello': web; did you mean 'web'\?/);
  });

  it('reports cloud-config and manifest problems together', () => {
    const e = manifestError(BASE_MANIFEST.replace('instances: 2', 'instances: x'), {
      'deployments/cloud-config.yml': 'azs:\n- name: z1\n  cloud: lcoal\nclouds:\n- name: local\n  type: local\nvm_types: []\n',
    });
    const lines = e.message.split('\n');
    expect(lines[0]).toMatch(/cloud-config\.yml:3:10: azs\[0\]\.cloud: unknown cloud 'lcoal'; clouds in this cloud-config: local; did you mean 'local'\?/);
    expect(lines[1]).toMatch(/hello\.yml:7:14: instance_groups\[0\]\.instances: must be a whole number/);
  });

  it('validates cloud types and unique names in the cloud-config', () => {
    const e = manifestError(BASE_MANIFEST, {
      'deployments/cloud-config.yml': 'azs: [{name: z1, cloud: l}, {name: z1, cloud: l}]\nclouds: [{name: l, type: azure}]\nvm_types: [{name: small}]\n',
    });
    expect(e.message).toContain("azs[1].name: duplicate az name 'z1'; also used by azs[0]");
    expect(e.message).toContain("clouds[0].type: must be one of: local, aws, gcp, static, sim, got 'azure'");
  });

  it('says an empty file is empty', () => {
    const e = manifestError('# nothing yet\n');
    expect(e.message).toMatch(/hello\.yml:1:1: \(top level\): the file is empty/);
  });
});
