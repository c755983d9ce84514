/**
 * A release is a directory `releases/<name>/` with `release.yml` and `jobs/<job>/` (spec.yml,
 * bin/, templates/). Releases are content-addressed: the version is a digest of every file's
 * path, executable bit and bytes, so the same bytes always give the same version and any edit
 * gives a new one (what makes "changing the release updates the instances" exact).
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { loadJobSpec, loadReleaseSpec } from '../manifest/load.js';
import type { JobSpec } from '../manifest/types.js';
import { userError } from '../errors.js';

export interface ReleaseFile {
  /** path relative to the job directory, with `/` separators */
  path: string;
  executable: boolean;
  content: Buffer;
}

export interface ReleaseJob {
  name: string;
  spec: JobSpec;
  /** bin/ and any other plain files, copied as they are */
  files: ReleaseFile[];
  /** templates/<src> contents keyed by src */
  templates: Map<string, string>;
}

export interface Release {
  name: string;
  /** sha256 of the release's contents, hex */
  version: string;
  dir: string;
  jobs: Map<string, ReleaseJob>;
}

/** The version as operators read it: 12 hex digits, like a short git hash. */
export const shortVersion = (version: string) => version.slice(0, 12);

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name.startsWith('.')) continue;
    const full = join(dir, entry.name);
    if (entry.isSymbolicLink()) {
      // A link could point anywhere on the director's machine; releases ship bytes, not links.
      throw userError('release_symlink', `release file ${full} is a symbolic link`, {
        hint: 'replace the link with the file it points to',
      });
    }
    if (entry.isDirectory()) out.push(...walk(full));
    else if (entry.isFile()) out.push(full);
  }
  return out.sort();
}

export function loadRelease(dir: string): Release {
  const spec = loadReleaseSpec(dir);
  const hash = createHash('sha256');
  for (const file of walk(dir)) {
    const rel = relative(dir, file).split(sep).join('/');
    const executable = (statSync(file).mode & 0o111) !== 0;
    hash.update(`${rel}\0${executable ? 'x' : '-'}\0`);
    hash.update(readFileSync(file));
    hash.update('\0');
  }
  const jobs = new Map<string, ReleaseJob>();
  for (const jobName of spec.jobs) {
    const jobDir = join(dir, 'jobs', jobName);
    const jobSpec = loadJobSpec(jobDir);
    const files: ReleaseFile[] = [];
    const templates = new Map<string, string>();
    for (const file of walk(jobDir)) {
      const rel = relative(jobDir, file).split(sep).join('/');
      if (rel === 'spec.yml') continue;
      if (rel.startsWith('templates/')) {
        templates.set(rel.slice('templates/'.length), readFileSync(file, 'utf8'));
        continue;
      }
      files.push({ path: rel, executable: (statSync(file).mode & 0o111) !== 0, content: readFileSync(file) });
    }
    for (const src of Object.keys(jobSpec.templates)) {
      if (!templates.has(src)) {
        throw userError('release_template_missing', `job '${jobName}' of release '${spec.name}' lists template '${src}' but ${join(jobDir, 'templates', src)} does not exist`, {
          hint: 'add the file or remove it from spec.yml templates',
        });
      }
    }
    jobs.set(jobName, { name: jobName, spec: jobSpec, files, templates });
  }
  return { name: spec.name, version: hash.digest('hex'), dir, jobs };
}
