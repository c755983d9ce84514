import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { DirectorError, isDirectorError } from '../../src/errors.js';
import { loadHealthChecks, loadJobSpec, loadReleaseSpec } from '../../src/manifest/load.js';
import { makeProject } from '../fixtures/manifest/project.js';

const basic = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/manifest/basic');

function errorOf(fn: () => unknown): DirectorError {
  try {
    fn();
  } catch (e) {
    if (isDirectorError(e)) return e;
    throw e;
  }
  throw new Error('expected a DirectorError');
}

describe('loadHealthChecks', () => {
  it('reads checks from the first directory that has them, with defaults', () => {
    const p = makeProject({ 'canaries/tcp-port.yml': 'type: tcp\nport: 9999\n' });
    const checks = loadHealthChecks(['http-root', 'tcp-port', 'http-root'], [p.file('canaries'), path.join(basic, 'canaries')]);
    expect(checks).toEqual([
      { name: 'http-root', type: 'http', port: { property: 'port' }, path: '/', expectStatus: 200, timeoutMs: 2000 },
      { name: 'tcp-port', type: 'tcp', port: 9999, timeoutMs: 2000 },
    ]);
  });

  it('reads command checks', () => {
    const p = makeProject({ 'c/ready.yml': 'type: command\ncommand: test -f /var/run/ready\ntimeout_ms: 500\n' });
    expect(loadHealthChecks(['ready'], [p.file('c')])).toEqual([
      { name: 'ready', type: 'command', command: 'test -f /var/run/ready', timeoutMs: 500 },
    ]);
  });

  it('lists the directories searched and the checks that exist for an unknown name', () => {
    const e = errorOf(() => loadHealthChecks(['http-rot', '../../etc/passwd'], [path.join(basic, 'canaries'), '/nonexistent']));
    expect(e.code).toBe('health_check_not_found');
    expect(e.message).toContain("'http-rot' (did you mean 'http-root'?)");
    expect(e.message).toContain("'../../etc/passwd'");
    expect(e.message).toContain(`searched: ${path.join(basic, 'canaries')}, /nonexistent`);
    expect(e.message).toContain('checks that exist: http-root, tcp-port');
  });

  it('validates a check with file:line errors', () => {
    const p = makeProject({
      'c/bad.yml': 'name: bad\ntype: http\nport: 70000\nexpect_status: "ok"\ncommand: true\ntimout_ms: 5\n',
      'c/worse.yml': 'type: ftp\n',
    });
    const e = errorOf(() => loadHealthChecks(['bad', 'worse'], [p.file('c')]));
    expect(e.code).toBe('health_check_invalid');
    expect(e.message.split('\n')).toEqual([
      `${p.file('c/bad.yml')}:3:7: port: must be a port from 1 to 65535, or {property: NAME}, got 70000`,
      `${p.file('c/bad.yml')}:4:16: expect_status: must be a whole number from 100 to 599, got 'ok'`,
      `${p.file('c/bad.yml')}:5:1: command: unknown key 'command'; 'command' applies to command checks only`,
      `${p.file('c/bad.yml')}:6:1: timout_ms: unknown key 'timout_ms'; did you mean 'timeout_ms'?`,
      `${p.file('c/worse.yml')}:1:7: type: must be one of: http, tcp, command, got 'ftp'`,
    ]);
  });

  it('requires the name inside the file to match the file name', () => {
    const p = makeProject({ 'c/a.yml': 'name: b\ntype: tcp\nport: 1\n' });
    expect(errorOf(() => loadHealthChecks(['a'], [p.file('c')])).message).toContain("name: name 'b' does not match the file name 'a.yml'");
  });
});

describe('loadReleaseSpec and loadJobSpec', () => {
  it('reads release.yml', () => {
    expect(loadReleaseSpec(path.join(basic, 'releases/hello'))).toEqual({ name: 'hello', jobs: ['web'] });
  });

  it('reads spec.yml', () => {
    expect(loadJobSpec(path.join(basic, 'releases/hello/jobs/web'))).toEqual({
      name: 'web',
      templates: { 'ctl.erb': 'bin/ctl', 'config.json.erb': 'config/config.json' },
      properties: { port: { description: 'port to listen on', default: 8080 }, greeting: { description: 'what to say' } },
    });
  });

  it('reports release.yml problems with lines', () => {
    const p = makeProject({ 'releases/hello/release.yml': 'name: hello\njobs: [web, web]\njob: []\n' });
    const e = errorOf(() => loadReleaseSpec(p.file('releases/hello')));
    expect(e.code).toBe('release_invalid');
    expect(e.message.split('\n')).toEqual([
      `${p.file('releases/hello/release.yml')}:2:13: jobs[1]: job 'web' is listed twice`,
      `${p.file('releases/hello/release.yml')}:3:1: job: unknown key 'job'; did you mean 'jobs'?`,
    ]);
  });

  it('refuses template paths that leave the job', () => {
    const p = makeProject({ 'j/spec.yml': 'name: j\ntemplates:\n  ctl.erb: ../../etc/cron.d/x\n  /abs: bin/ok\n' });
    const e = errorOf(() => loadJobSpec(p.file('j')));
    expect(e.code).toBe('job_spec_invalid');
    expect(e.message).toContain('templates["ctl.erb"]: must be a relative path inside the job');
    expect(e.message).toContain('templates["/abs"]: the key must be a relative path inside the job');
    expect(e.message.split('\n')).toHaveLength(2);
  });

  it('names a missing spec file', () => {
    const e = errorOf(() => loadJobSpec('/nonexistent/job'));
    expect(e.code).toBe('file_not_found');
    expect(e.message).toContain('/nonexistent/job/spec.yml');
  });
});
