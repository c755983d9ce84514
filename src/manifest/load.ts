/**
 * Reading the files an operator writes: the deployment manifest with its cloud-config, health
 * checks, and the release and job specs. Everything is read, interpolated and validated here;
 * callers get the normalised values of types.ts or one DirectorError listing every problem.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { userError } from '../errors.js';
import { assertValid, checkCloudConfig, checkHealthCheck, checkJobSpec, checkManifest, checkReleaseSpec, type Checked } from './schema.js';
import { closest, listOrNone } from './suggest.js';
import type { HealthCheckDef, JobSpec, LoadedDeployment, ReleaseSpec } from './types.js';
import { assertVarsResolved, interpolateDocument, loadVarStore, makeRedactor, mergeUsedVars } from './vars.js';
import { readYamlFile } from './yaml.js';

export { makeRedactor };

export interface LoadDeploymentOptions {
  /** default: cloud-config.yml next to the manifest */
  cloudConfigPath?: string;
  /** `--var NAME=VALUE`; wins over every vars file */
  vars?: Record<string, string>;
  /** `--vars-file FILE`, in order: a later file wins */
  varsFiles?: string[];
}

export function loadDeployment(manifestPath: string, opts: LoadDeploymentOptions = {}): LoadedDeployment {
  const manifestY = readYamlFile(manifestPath, {
    what: 'manifest',
    hint: `check the path of the deployment manifest; relative paths are resolved from ${process.cwd()}`,
  });
  const cloudConfigPath = opts.cloudConfigPath ?? defaultCloudConfig(manifestPath);
  const cloudConfigY = readYamlFile(cloudConfigPath, {
    what: 'cloud-config',
    hint: 'check the path given to --cloud-config',
  });

  const store = loadVarStore(opts);
  const m = interpolateDocument(manifestY, store);
  const c = interpolateDocument(cloudConfigY, store);
  assertVarsResolved([...m.missing, ...c.missing], [...m.invalid, ...c.invalid]);
  const vars = mergeUsedVars(m.used, c.used);
  const redact = makeRedactor(vars);

  const cloudConfig = checkCloudConfig(cloudConfigY, { redact });
  const manifest = checkManifest(manifestY, {
    baseDir: path.dirname(path.resolve(manifestPath)),
    cloudConfig: cloudConfig.value,
    cloudConfigFile: cloudConfigPath,
    readRelease: loadReleaseSpec,
    redact,
  });
  // Both files in one error: fixing the manifest should not reveal a second round of problems.
  assertValid([cloudConfig, manifest]);

  return {
    manifest: manifest.value!,
    cloudConfig: cloudConfig.value!,
    manifestFile: path.resolve(manifestPath),
    cloudConfigFile: path.resolve(cloudConfigPath),
    vars,
    warnings: [...manifest.warnings, ...cloudConfig.warnings],
  };
}

function defaultCloudConfig(manifestPath: string): string {
  const candidate = path.join(path.dirname(manifestPath), 'cloud-config.yml');
  if (!existsSync(candidate)) {
    throw userError('cloud_config_missing', `no cloud-config: --cloud-config was not given and ${candidate} does not exist`, {
      hint: `pass --cloud-config FILE, or create ${candidate}`,
      location: { file: manifestPath },
    });
  }
  return candidate;
}

const CHECK_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/**
 * Reads `<dir>/<name>.yml` from the first of `searchDirs` that has it, for each name (each
 * name once, in the order given). All unknown names are reported in one error.
 */
export function loadHealthChecks(names: string[], searchDirs: string[]): HealthCheckDef[] {
  const unique = [...new Set(names)];
  const found: Array<{ name: string; file: string }> = [];
  const unknown: string[] = [];
  for (const name of unique) {
    // A name is a file name; anything with a separator would read outside the search dirs.
    const dir = CHECK_NAME_RE.test(name) ? searchDirs.find((d) => existsSync(path.join(d, `${name}.yml`))) : undefined;
    if (dir === undefined) unknown.push(name);
    else found.push({ name, file: path.join(dir, `${name}.yml`) });
  }
  if (unknown.length > 0) {
    const available = listChecks(searchDirs);
    const lines = unknown.map((n) => {
      const near = closest(n, available);
      return `  '${n}'${near ? ` (did you mean '${near}'?)` : ''}`;
    });
    throw userError(
      'health_check_not_found',
      `unknown health check${unknown.length === 1 ? '' : 's'}:\n${lines.join('\n')}\n` +
        `searched: ${listOrNone(searchDirs)}\nchecks that exist: ${listOrNone(available)}`,
      { hint: `create ${searchDirs[0] ?? 'canaries'}/<name>.yml, or fix the name in the instance group's health list` },
    );
  }
  const results = found.map(({ name, file }) => checkHealthCheck(readYamlFile(file, { what: 'health check' }), name));
  assertValid(results, { code: 'health_check_invalid' });
  return results.map((r) => r.value!);
}

function listChecks(dirs: string[]): string[] {
  const names = new Set<string>();
  for (const dir of dirs) {
    try {
      for (const f of readdirSync(dir)) if (f.endsWith('.yml')) names.add(f.slice(0, -'.yml'.length));
    } catch {
      // a search dir that does not exist simply holds no checks
    }
  }
  return [...names].sort();
}

/** `<releaseDir>/release.yml` */
export function loadReleaseSpec(releaseDir: string): ReleaseSpec {
  return loadSpec(path.join(releaseDir, 'release.yml'), 'release.yml', checkReleaseSpec, 'release_invalid');
}

/** `<jobDir>/spec.yml` */
export function loadJobSpec(jobDir: string): JobSpec {
  return loadSpec(path.join(jobDir, 'spec.yml'), 'job spec', checkJobSpec, 'job_spec_invalid');
}

function loadSpec<T>(file: string, what: string, check: (y: ReturnType<typeof readYamlFile>) => Checked<T>, code: string): T {
  const checked = check(readYamlFile(file, { what }));
  assertValid([checked], { code });
  return checked.value!;
}
