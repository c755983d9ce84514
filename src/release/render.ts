/**
 * Renders a job's templates for one instance. Handlebars in strict mode: a template that names a
 * property nobody set fails the render with the property's name, instead of writing an empty
 * string into a config file (the silent failure ERB and Mustache both allow).
 */
import Handlebars from 'handlebars';
import { isDeepStrictEqual } from 'node:util';
import { userError } from '../errors.js';
import type { ReleaseJob } from './release.js';

export interface InstanceSpec {
  deployment: string;
  /** instance group name */
  name: string;
  index: number;
  id: string;
  az: string;
  /** the instance's primary IP: jobs bind here, never to 0.0.0.0 */
  address: string;
  job: { name: string };
  release: { name: string; version: string };
}

export interface RenderedFile {
  path: string;
  content: Buffer;
  executable: boolean;
}

const hb = Handlebars.create();
hb.registerHelper('json', (value: unknown) => new hb.SafeString(JSON.stringify(value)));

/** Compiled once per template text: a rollout renders the same templates for every instance. */
const compiled = new Map<string, HandlebarsTemplateDelegate>();
function compile(source: string): HandlebarsTemplateDelegate {
  let t = compiled.get(source);
  if (!t) {
    t = hb.compile(source, { strict: true, noEscape: true });
    compiled.set(source, t);
  }
  return t;
}

/** Job spec defaults overlaid with the manifest's properties; unknown properties are an error. */
export function effectiveProperties(job: ReleaseJob, given: Record<string, unknown>, where: string): Record<string, unknown> {
  const declared = job.spec.properties;
  const unknown = Object.keys(given).filter((k) => !(k in declared));
  if (unknown.length > 0) {
    throw userError('property_unknown', `${where}: job '${job.name}' does not declare propert${unknown.length > 1 ? 'ies' : 'y'} ${unknown.map((k) => `'${k}'`).join(', ')}`, {
      hint: `properties the job declares: ${Object.keys(declared).join(', ') || '(none)'}`,
    });
  }
  const out: Record<string, unknown> = {};
  for (const [key, def] of Object.entries(declared)) {
    if (key in given) out[key] = given[key];
    else if (def.default !== undefined) out[key] = def.default;
  }
  return out;
}

export function renderJob(job: ReleaseJob, properties: Record<string, unknown>, spec: InstanceSpec): RenderedFile[] {
  const out: RenderedFile[] = job.files.map((f) => ({ path: f.path, content: f.content, executable: f.executable }));
  for (const [src, dest] of Object.entries(job.spec.templates)) {
    const source = job.templates.get(src) ?? '';
    let text: string;
    try {
      text = compile(source)({ p: properties, spec });
    } catch (err) {
      const msg = err instanceof Error ? err.message.split('\n')[0] : String(err);
      throw userError('template_render_failed', `rendering ${spec.release.name}/${job.name}/templates/${src} for ${spec.name}/${spec.index}: ${msg}`, {
        hint: 'set the property in the manifest or give it a default in the job spec',
        cause: err,
      });
    }
    out.push({ path: dest, content: Buffer.from(text), executable: dest.startsWith('bin/') });
  }
  return out;
}

export function sameProperties(a: Record<string, unknown>, b: Record<string, unknown>): boolean {
  return isDeepStrictEqual(a, b);
}
