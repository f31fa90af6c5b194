// `npm run demo`: the whole loop on this machine, with nothing to set up. It creates an embedded
// broker in a temporary directory with sample data and policy, starts it on a free loopback port,
// runs docs/examples/finetune.py (boto3; finetune-sdk.ts with the AWS SDK for JavaScript when
// boto3 is missing) under `jit run --scope datasets/train`, shows the grant issued
// and then revoked, and cleans up. Every step runs the real bin/jit.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = path.join(root, 'bin', 'jit.js');
const label = process.stdout.isTTY && !process.env.NO_COLOR ? '\x1b[1mdemo:\x1b[0m' : 'demo:';
const say = (text: string) => process.stdout.write(`\n${label} ${text}\n`);

const SAMPLE = {
  'train/shard-0000.jsonl': [
    { prompt: 'Summarise: the cat sat on the mat', completion: 'a cat sat on a mat' },
    { prompt: 'Translate to French: good morning', completion: 'bonjour' },
    { prompt: 'What is 2 + 2?', completion: '4' },
  ],
  'train/shard-0001.jsonl': [
    { prompt: 'Summarise: the dog chased the ball', completion: 'a dog chased a ball' },
    { prompt: 'Translate to French: thank you', completion: 'merci' },
  ],
  'eval/holdout.jsonl': [{ prompt: 'held-out evaluation item', completion: 'never seen in training' }],
};

function runJit(args: string[], env: NodeJS.ProcessEnv, capture = false): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env, stdio: ['inherit', capture ? 'pipe' : 'inherit', 'inherit'] });
    let stdout = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout }));
  });
}

function startBroker(dir: string, env: NodeJS.ProcessEnv): Promise<{ url: string; process: ChildProcess }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, 'broker', 'start', '--dir', dir, '--port', '0'], {
      env,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = /listening on (\S+)/.exec(output);
      if (match?.[1]) resolve({ url: match[1], process: child });
    });
    child.on('exit', (code) => reject(new Error(`the broker exited early (${code})`)));
  });
}

function hasBoto3(): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = spawn('python3', ['-c', 'import boto3'], { stdio: 'ignore' });
    probe.on('error', () => resolve(false));
    probe.on('exit', (code) => resolve(code === 0));
  });
}

async function main(): Promise<number> {
  const workdir = await mkdtemp(path.join(tmpdir(), 'jit-demo-'));
  const brokerDir = path.join(workdir, 'broker');
  const env: NodeJS.ProcessEnv = { ...process.env, JIT_CONFIG_DIR: path.join(workdir, 'config') };
  let broker: ChildProcess | undefined;
  try {
    say(`creating a broker in ${brokerDir}: broker.yaml with one files resource "datasets" and a policy`);
    const init = await runJit(['broker', 'init', '--dir', brokerDir, '--json'], env, true);
    if (init.code !== 0) throw new Error('jit broker init failed');
    const { token } = JSON.parse(init.stdout) as { token: string };
    for (const [name, rows] of Object.entries(SAMPLE)) {
      const file = path.join(brokerDir, 'data', 'datasets', name);
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(file, `${rows.map((row) => JSON.stringify(row)).join('\n')}\n`);
    }

    const started = await startBroker(brokerDir, env);
    broker = started.process;
    say(`broker listening on ${started.url}; the admin's token goes to jit through JIT_TOKEN (a CI-style login)`);
    const jobEnv = { ...env, JIT_BROKER_URL: started.url, JIT_TOKEN: token };

    // The job reads its data with boto3 when python3 has it, else with the AWS SDK for JavaScript.
    const job = (await hasBoto3())
      ? ['python3', path.join(root, 'docs/examples/finetune.py')]
      : [process.execPath, path.join(root, 'docs/examples/finetune-sdk.ts')];
    if (job[0] !== 'python3') {
      say('boto3 is not installed for python3 (apt install python3-boto3), so the job reads with the AWS SDK for JavaScript');
    }
    say(
      `jit run -v --scope datasets/train -- ${job[0] === 'python3' ? 'python3 docs/examples/finetune.py' : 'node docs/examples/finetune-sdk.ts'}`,
    );
    const ran = await runJit(
      ['run', '-v', '--scope', 'datasets/train', '--ttl', '15m', '--reason', 'demo fine-tune', '--', ...job],
      jobEnv,
    );
    if (ran.code !== 0) throw new Error(`the job exited with ${ran.code}`);

    const response = await fetch(`${started.url}/v1/grants`, { headers: { authorization: `Bearer ${token}` } });
    const { grants } = (await response.json()) as { grants: { id: string; state: string; endedAt: string }[] };
    const [grant] = grants;
    if (grant?.state !== 'revoked') throw new Error(`expected the job's grant to be revoked, the broker says: ${JSON.stringify(grants)}`);
    say(`after the job: the broker reports grant ${grant.id} as ${grant.state} (at ${grant.endedAt}); its credential is dead`);
    say('jit grants (what this machine still holds):');
    await runJit(['grants'], jobEnv);
    say('done: one grant, issued for the job, used for datasets/train only, revoked when the job ended');
    return 0;
  } catch (error) {
    process.stderr.write(`demo: failed: ${(error as Error).message}\n`);
    return 1;
  } finally {
    if (broker && broker.exitCode === null) {
      const exited = new Promise((resolve) => broker?.once('exit', resolve));
      broker.kill('SIGTERM');
      await exited;
    }
    await rm(workdir, { recursive: true, force: true });
  }
}

process.exitCode = await main();
