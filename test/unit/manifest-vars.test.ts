import { describe, expect, it } from 'vitest';
import { DirectorError, isDirectorError } from '../../src/errors.js';
import { loadDeployment } from '../../src/manifest/load.js';
import { interpolate, loadVarStore, makeRedactor } from '../../src/manifest/vars.js';
import { parseYaml } from '../../src/manifest/yaml.js';
import { BASE_MANIFEST, makeProject } from '../fixtures/manifest/project.js';

function errorOf(fn: () => unknown): DirectorError {
  try {
    fn();
  } catch (e) {
    if (isDirectorError(e)) return e;
    throw e;
  }
  throw new Error('expected a DirectorError');
}

describe('((var)) interpolation', () => {
  it('lets a var stand for a whole list', () => {
    const p = makeProject({
      'deployments/hello.yml': BASE_MANIFEST.replace('azs: [z1, z2]', 'azs: ((azs))'),
      'vars.yml': 'azs: [z1, z2]\n',
    });
    const d = loadDeployment(p.manifest, { varsFiles: [p.file('vars.yml')] });
    expect(d.manifest.instanceGroups[0]!.azs).toEqual(['z1', 'z2']);
    expect(d.vars).toEqual([{ name: 'azs', value: ['z1', 'z2'] }]);
  });

  it('substitutes inside longer strings, in both files, and in quoted scalars', () => {
    const p = makeProject({
      'deployments/hello.yml': `${BASE_MANIFEST}    properties:\n      url: "https://((host)):((port))/x"\n      port: ((port))\n`,
      'deployments/cloud-config.yml': `azs: [{name: z1, cloud: local}, {name: z2, cloud: local}]
clouds:
- name: local
  type: local
  root: /srv/((env))
vm_types: [{name: small}]
`,
    });
    const d = loadDeployment(p.manifest, { vars: { host: 'example.org', port: '8443', env: 'prod' } });
    expect(d.manifest.instanceGroups[0]!.jobs[0]!.properties).toEqual({ url: 'https://example.org:8443/x', port: '8443' });
    expect(d.cloudConfig.clouds[0]!.properties).toEqual({ root: '/srv/prod' });
    expect(d.vars.map((v) => v.name).sort()).toEqual(['env', 'host', 'port']);
  });

  it('turns a numeric --var into a number where a number is expected', () => {
    const p = makeProject({ 'deployments/hello.yml': BASE_MANIFEST.replace('instances: 2', 'instances: ((n))') });
    expect(loadDeployment(p.manifest, { vars: { n: '5' } }).manifest.instanceGroups[0]!.instances).toBe(5);
  });

  it('looks up keys of map vars, and later sources win', () => {
    const p = makeProject({
      'deployments/hello.yml': `${BASE_MANIFEST}    properties:\n      user: ((db.user))\n      pass: ((db.password))\n      v: ((version))\n      tag: v((version))\n`,
      'a.yml': 'db: {user: admin, password: one}\nversion: 1.10\n',
      'b.yml': 'db: {user: root, password: two}\n',
    });
    const d = loadDeployment(p.manifest, { varsFiles: [p.file('a.yml'), p.file('b.yml')] });
    expect(d.manifest.instanceGroups[0]!.jobs[0]!.properties).toEqual({ user: 'root', pass: 'two', v: 1.1, tag: 'v1.10' });
    const over = loadDeployment(p.manifest, { varsFiles: [p.file('a.yml'), p.file('b.yml')], vars: { 'db.password': 'three' } });
    expect(over.manifest.instanceGroups[0]!.jobs[0]!.properties.pass).toBe('three');
  });

  it('reports all missing vars at once, each with where it is used', () => {
    const p = makeProject({
      'deployments/hello.yml': BASE_MANIFEST.replace('azs: [z1, z2]', 'azs: ((azs))').replace(
        'vm_type: small',
        'vm_type: ((vm_type))\n  health: [((check)), ((check))]',
      ),
      'deployments/cloud-config.yml': 'azs: [{name: z1, cloud: ((cloud))}]\nclouds: [{name: local, type: local}]\nvm_types: [{name: small}]\n',
    });
    const e = errorOf(() => loadDeployment(p.manifest, {}));
    expect(e.code).toBe('var_missing');
    expect(e.message.split('\n')).toEqual([
      '4 vars are not set:',
      `  ((azs)) used at ${p.manifest}:8`,
      `  ((vm_type)) used at ${p.manifest}:9`,
      `  ((check)) used at ${p.manifest}:10, ${p.manifest}:10`,
      `  ((cloud)) used at ${p.file('deployments/cloud-config.yml')}:1`,
    ]);
    expect(e.hint).toBe('pass --var NAME=VALUE or --vars-file FILE');
    expect(e.location).toMatchObject({ file: p.manifest, line: 8 });
  });

  it('reports a missing key of a map var', () => {
    const p = makeProject({
      'deployments/hello.yml': `${BASE_MANIFEST}    properties:\n      pass: ((db.pasword))\n`,
      'v.yml': 'db: {password: x}\n',
    });
    const e = errorOf(() => loadDeployment(p.manifest, { varsFiles: [p.file('v.yml')] }));
    expect(e.code).toBe('var_missing');
    expect(e.message).toContain("((db.pasword)) used at");
    expect(e.message).toContain("var 'db' has no key 'pasword'");
  });

  it('refuses a map or list var inside a longer string', () => {
    const y = parseYaml('a: "zones: ((azs))"\n', 'm.yml');
    const e = errorOf(() => interpolate(y, loadVarStore({ varsFiles: [] , vars: {} }).set('azs', { value: ['z1'] })));
    expect(e.code).toBe('var_invalid');
    expect(e.message).toContain('m.yml:1:4: ((azs)) is a list and cannot be part of a longer string');
  });

  it('keeps the text of a version that comes from a vars file', () => {
    const p = makeProject({
      'deployments/hello.yml': BASE_MANIFEST.replace('  path: ../releases/hello\n', '  path: ../releases/hello\n  version: ((v))\n'),
      'v.yml': 'v: 621.740\n',
    });
    expect(loadDeployment(p.manifest, { varsFiles: [p.file('v.yml')] }).manifest.releases[0]!.version).toBe('621.740');
  });

  it('substitutes through anchors, aliases and merge keys', () => {
    const y = parseYaml('base: &b {size: ((size)), name: x}\nother:\n  <<: *b\n  name: y\nsame: &s ((size))\nagain: *s\n', 'm.yml');
    interpolate(y, new Map([['size', { value: 3 }]]));
    expect(y.doc.toJS()).toEqual({ base: { size: 3, name: 'x' }, other: { size: 3, name: 'y' }, same: 3, again: 3 });
  });

  it('does not interpolate a var value again', () => {
    const y = parseYaml('a: ((x))\nb: pre-((x))\n', 'm.yml');
    interpolate(y, new Map([['x', { value: '((y))' }]]));
    expect(y.doc.toJS()).toEqual({ a: '((y))', b: 'pre-((y))' });
  });
});

describe('vars never appear in errors', () => {
  it('names the var, not its value, when a var-sourced value is wrong', () => {
    const p = makeProject({
      'deployments/hello.yml': BASE_MANIFEST.replace('instances: 2', 'instances: ((count))').replace('vm_type: small', 'vm_type: ((vmt))'),
    });
    const e = errorOf(() => loadDeployment(p.manifest, { vars: { count: 'hunter2-secret', vmt: 'topsecret-type' } }));
    expect(e.code).toBe('manifest_invalid');
    expect(e.message).toContain(`${p.manifest}:7:3: instance_groups[0].instances: must be a whole number >= 0, got ((count))`);
    expect(e.message).toMatch(/:9:3: instance_groups\[0\]\.vm_type: unknown vm_type \(\(vmt\)\); vm_types in .*: small$/);
    expect(JSON.stringify(e)).not.toContain('secret');
    expect(e.message + e.hint).not.toContain('secret');
  });

  it('names the var for an element of a list var', () => {
    const p = makeProject({
      'deployments/hello.yml': BASE_MANIFEST.replace('azs: [z1, z2]', 'azs: ((azs))'),
      'v.yml': 'azs: [z1, private-zone-7]\n',
    });
    const e = errorOf(() => loadDeployment(p.manifest, { varsFiles: [p.file('v.yml')] }));
    expect(e.message).toMatch(/:8:3: instance_groups\[0\]\.azs\[1\]: unknown az \(\(azs\)\); azs in .*: z1, z2$/);
    expect(e.message).not.toContain('private-zone');
  });

  it('gives a --var-specific hint for a boolean that came from --var', () => {
    const p = makeProject({ 'deployments/hello.yml': `${BASE_MANIFEST}update:\n  serial: ((serial))\n` });
    const e = errorOf(() => loadDeployment(p.manifest, { vars: { serial: 'false' } }));
    expect(e.message).toContain('update.serial: must be a boolean, not a string, got ((serial))');
    expect(e.hint).toContain('--vars-file');
  });

  it('redacts var values that reach a message indirectly', () => {
    const p = makeProject({
      'deployments/hello.yml': BASE_MANIFEST.replace('- name: hello\n  path', '- name: ((rel))\n  path').replace(
        'release: hello',
        'release: hellp',
      ),
      'releases/hello/release.yml': 'name: classified\njobs: [web]\n',
    });
    const e = errorOf(() => loadDeployment(p.manifest, { vars: { rel: 'classified' } }));
    expect(e.message).toContain("unknown release 'hellp'; releases in this manifest: ((rel))");
    expect(e.message).not.toContain('classified');
  });
});

describe('makeRedactor', () => {
  it('replaces every value, longest first, and map/list leaves', () => {
    const redact = makeRedactor([
      { name: 'pw', value: 'hunter2' },
      { name: 'long', value: 'hunter2hunter2' },
      { name: 'db', value: { user: 'admin', port: 5432, tls: true } },
      { name: 'list', value: ['alpha', ['beta']] },
    ]);
    expect(redact('login admin:hunter2 then hunter2hunter2 on 5432')).toBe('login ((db)):((pw)) then ((long)) on ((db))');
    expect(redact('alpha beta true')).toBe('((list)) ((list)) true');
  });

  it('leaves values shorter than 3 characters alone in free text', () => {
    const redact = makeRedactor([{ name: 'n', value: '2' }, { name: 'ab', value: 'ab' }]);
    expect(redact('2 tabs')).toBe('2 tabs');
  });

  it('does not mangle a replacement that contains another value', () => {
    const redact = makeRedactor([
      { name: 'a', value: 'secret' },
      { name: 'b', value: '((a))' },
    ]);
    expect(redact('secret ((a))')).toBe('((a)) ((b))');
  });

  it('catches values escaped inside JSON', () => {
    const key = '-----BEGIN KEY-----\nabc"def\n-----END KEY-----';
    const redact = makeRedactor([{ name: 'key', value: key }]);
    expect(redact(JSON.stringify({ key }))).toBe('{"key":"((key))"}');
    expect(redact(`raw: ${key}`)).toBe('raw: ((key))');
  });

  it('never leaks a value used in a loaded deployment', () => {
    const p = makeProject({
      'deployments/hello.yml': `${BASE_MANIFEST}    properties:\n      password: ((password))\n      dsn: "postgres://app:((password))@db"\n`,
    });
    const d = loadDeployment(p.manifest, { vars: { password: 's3cr3t-Pa$$' } });
    const out = makeRedactor(d.vars)(JSON.stringify(d.manifest));
    expect(out).not.toContain('s3cr3t');
    expect(out).toContain('"password":"((password))"');
    expect(out).toContain('postgres://app:((password))@db');
  });

  it('is the identity with no vars', () => {
    expect(makeRedactor([])('anything')).toBe('anything');
  });
});
