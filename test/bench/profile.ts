// Reads a V8 CPU profile (`node --cpu-prof`) for `npm run bench:gateway`: where a server's busy
// time went in a window of the run, by the nearest jit function on the stack and by self time.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ROOT } from '../helpers/cli.ts';

type CallFrame = { functionName: string; url: string; lineNumber: number };
type ProfileNode = { id: number; callFrame: CallFrame; children?: number[] };
/** The .cpuprofile format (Chrome DevTools protocol Profiler.Profile); times in microseconds. */
type CpuProfile = { nodes: ProfileNode[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] };

export type Share = { label: string; ms: number; share: number };
export type ProfileSummary = {
  /** Sampled time in the window that was not idle. */
  busyMs: number;
  /** Busy time by the innermost frame from src/ on the stack (or, with none, where the leaf runs). */
  byJitFrame: Share[];
  /** The same, by the file of that function ("outside jit code" for the rest). */
  byJitFile: Share[];
  /** Busy time by the function running (self time). */
  bySelf: Share[];
};

const SOURCE = `file://${path.join(ROOT, 'src')}/`;

function where(frame: CallFrame): string {
  const { url } = frame;
  if (url === '') return '';
  const modules = url.lastIndexOf('/node_modules/');
  if (modules !== -1) return url.slice(modules + '/node_modules/'.length);
  if (url.startsWith(`file://${ROOT}`)) return url.slice(`file://${ROOT}`.length);
  return url;
}

function label(frame: CallFrame): string {
  const file = where(frame);
  const name = frame.functionName || '(anonymous)';
  return file ? `${name} (${file}:${frame.lineNumber + 1})` : name;
}

/** Where a sample outside jit's code runs: a package, a Node module, or V8 itself ("(garbage collector)"). */
function area(frame: CallFrame): string {
  const file = where(frame);
  if (file === '') return frame.functionName;
  if (file.startsWith('node:')) return `Node ${file.split('/').slice(0, 3).join('/')}`;
  const [scope = '', name = ''] = file.split('/');
  return `package ${scope.startsWith('@') ? `${scope}/${name}` : scope}`;
}

function top(times: Map<string, number>, busy: number, count: number): Share[] {
  return [...times]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([name, micros]) => ({ label: name, ms: micros / 1000, share: micros / busy }));
}

/**
 * The samples of FILE taken between `fromMs` and `toMs` after the profile started (the whole
 * profile without them); each sample counts for the time until the next one, as DevTools does.
 */
export async function summarizeProfile(file: string, window: { fromMs?: number; toMs?: number } = {}, count = 8): Promise<ProfileSummary> {
  const profile = JSON.parse(await readFile(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const jitFrameOf = new Map<number, [string, string]>();
  const attribute = (id: number): [string, string] => {
    const known = jitFrameOf.get(id);
    if (known !== undefined) return known;
    let found: CallFrame | undefined;
    let caller: CallFrame | undefined;
    for (let at: number | undefined = id; at !== undefined && !found; at = parent.get(at)) {
      const frame = byId.get(at)?.callFrame;
      if (frame?.url.startsWith(SOURCE)) found = frame;
      else if (frame?.url && !caller) caller = frame;
    }
    const leaf = byId.get(id)?.callFrame ?? { functionName: '?', url: '', lineNumber: 0 };
    // A native leaf (writev, stat) says little alone: name the JavaScript that called it.
    const outside = `outside jit code: ${leaf.url === '' && caller ? `${leaf.functionName} in ${area(caller)}` : area(leaf)}`;
    const result: [string, string] = found ? [label(found), where(found)] : [outside, 'outside jit code'];
    jitFrameOf.set(id, result);
    return result;
  };
  const from = (window.fromMs ?? 0) * 1000;
  const to = (window.toMs ?? Number.POSITIVE_INFINITY) * 1000;
  const byJitFrame = new Map<string, number>();
  const byJitFile = new Map<string, number>();
  const bySelf = new Map<string, number>();
  let busy = 0;
  let at = 0;
  for (const [index, id] of profile.samples.entries()) {
    at += profile.timeDeltas[index] ?? 0;
    const lasted = profile.timeDeltas[index + 1] ?? 0;
    const frame = byId.get(id)?.callFrame;
    if (at < from || at > to || !frame || frame.functionName === '(idle)') continue;
    busy += lasted;
    const self = label(frame);
    bySelf.set(self, (bySelf.get(self) ?? 0) + lasted);
    const [jitFrame, jitFile] = attribute(id);
    byJitFrame.set(jitFrame, (byJitFrame.get(jitFrame) ?? 0) + lasted);
    byJitFile.set(jitFile, (byJitFile.get(jitFile) ?? 0) + lasted);
  }
  return {
    busyMs: busy / 1000,
    byJitFrame: top(byJitFrame, busy, count),
    byJitFile: top(byJitFile, busy, count),
    bySelf: top(bySelf, busy, count),
  };
}
