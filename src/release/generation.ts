/**
 * A generation is everything one instance runs: each job's release files plus its templates
 * rendered for that instance, packed as one tar.gz. Its id is a digest of the contents, so
 * re-applying the same thing is a no-op on the VM and a changed config is a new directory.
 */
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import * as tar from 'tar';
import type { JobRef } from '../manifest/types.js';
import { effectiveProperties, renderJob, type InstanceSpec, type RenderedFile } from './render.js';
import type { Release } from './release.js';

export interface Generation {
  id: string;
  /** packed on demand: drivers that do not upload (sim) never pay for it */
  archive(): Promise<Buffer>;
  /** path inside the generation → sha256, for drift checks */
  checksums: Record<string, string>;
}

export function renderInstance(
  jobs: JobRef[],
  releases: Map<string, Release>,
  spec: Omit<InstanceSpec, 'job' | 'release'>,
): Map<string, RenderedFile[]> {
  const out = new Map<string, RenderedFile[]>();
  for (const ref of jobs) {
    const release = releases.get(ref.release)!;
    const job = release.jobs.get(ref.name)!;
    const props = effectiveProperties(job, ref.properties, `instance group '${spec.name}'`);
    out.set(ref.name, renderJob(job, props, { ...spec, job: { name: ref.name }, release: { name: release.name, version: release.version } }));
  }
  return out;
}

export function generationOf(files: Map<string, RenderedFile[]>): Generation {
  const hash = createHash('sha256');
  const checksums: Record<string, string> = {};
  const entries: { path: string; file: RenderedFile }[] = [];
  for (const [job, list] of [...files].sort(([a], [b]) => a.localeCompare(b))) {
    for (const file of [...list].sort((a, b) => a.path.localeCompare(b.path))) {
      const path = `jobs/${job}/${file.path}`;
      if (path.split('/').includes('..')) throw new Error(`refusing path outside the job directory: ${path}`);
      entries.push({ path, file });
      const sum = createHash('sha256').update(file.content).digest('hex');
      checksums[path] = sum;
      hash.update(`${path}\0${file.executable ? 'x' : '-'}\0${sum}\0`);
    }
  }
  const id = hash.digest('hex').slice(0, 16);
  let packed: Promise<Buffer> | undefined;
  return { id, checksums, archive: () => (packed ??= pack(entries)) };
}

async function pack(entries: { path: string; file: RenderedFile }[]): Promise<Buffer> {
  const stage = mkdtempSync(join(tmpdir(), 'director-gen-'));
  try {
    for (const { path, file } of entries) {
      const full = join(stage, path);
      mkdirSync(dirname(full), { recursive: true });
      writeFileSync(full, file.content);
      chmodSync(full, file.executable ? 0o755 : 0o644);
    }
    const chunks: Buffer[] = [];
    const stream = tar.c({ gzip: true, cwd: stage, portable: true, mtime: new Date(0) }, ['jobs']);
    for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
    return Buffer.concat(chunks);
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}
