import { Argument, type Command } from 'commander';
import type { CommandDefinition } from '../command.ts';

const SHELLS = ['bash', 'zsh', 'fish'] as const;
type Shell = (typeof SHELLS)[number];

/**
 * One command word path ("" for jit itself, "broker token"), the words that may follow it (its
 * subcommands, or the values its first argument allows), and its long flags with the values each allows.
 */
type Node = {
  path: string;
  subcommands: { name: string; description: string }[];
  flags: { name: string; description: string; takesValue: boolean; values: readonly string[] }[];
};

export const completion: CommandDefinition = {
  path: 'completion',
  summary: 'print a shell completion script for bash, zsh or fish (e.g. source <(jit completion bash))',
  define: (command) => command.addArgument(new Argument('<shell>', 'the shell to complete in').choices(SHELLS)),
  async handler({ args }) {
    const shell = args[0] as Shell;
    // Loaded here, not at the top: main.ts and the registry import this file, and the script is
    // built from the very program jit parses with, so it cannot drift from the commands.
    const [{ buildProgram }, { COMMANDS }] = await Promise.all([import('../main.ts'), import('./index.ts')]);
    const nodes = walk(buildProgram(COMMANDS, async () => {}));
    const script = SCRIPTS[shell](nodes);
    return { data: { shell, script }, human: script };
  },
};

function walk(command: Command, path = ''): Node[] {
  const node: Node = {
    path,
    subcommands: [
      ...command.commands.map((sub) => ({ name: sub.name(), description: sub.description() })),
      ...(command.registeredArguments[0]?.argChoices ?? []).map((value) => ({
        name: value,
        description: command.registeredArguments[0]?.description ?? '',
      })),
    ],
    flags: [
      ...command.options.flatMap((option) =>
        option.long
          ? [
              {
                name: option.long,
                description: option.description,
                takesValue: option.required || option.optional,
                values: option.argChoices ?? [],
              },
            ]
          : [],
      ),
      { name: '--help', description: 'show help', takesValue: false, values: [] },
    ],
  };
  return [node, ...command.commands.flatMap((sub) => walk(sub, path ? `${path} ${sub.name()}` : sub.name()))];
}

/** A word in single quotes, safe in bash, zsh and fish. */
function quote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

/** The shell `case` branch that extends the command path only by a word that names a deeper command. */
function pathPatterns(nodes: Node[]): string {
  return nodes
    .filter((node) => node.path !== '')
    .map((node) => quote(node.path))
    .join('|');
}

/** `case` branches on "PATH FLAG" (the command path and the word before the cursor) for the flags whose values are known. */
function valueBranches(nodes: Node[], body: (values: readonly string[]) => string): string {
  return nodes
    .flatMap((node) =>
      node.flags
        .filter((flag) => flag.values.length > 0)
        .map((flag) => `    ${quote(`${node.path} ${flag.name}`)}) ${body(flag.values)} ;;`),
    )
    .join('\n');
}

const SCRIPTS: Record<Shell, (nodes: Node[]) => string> = {
  bash: (nodes) => `# bash completion for jit. Load it with: source <(jit completion bash)
_jit() {
  local cur=\${COMP_WORDS[COMP_CWORD]} cmdpath='' word i subcommands='' flags=''
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=\${COMP_WORDS[i]}
    [[ $word == -- ]] && return 0
    case "\${cmdpath:+$cmdpath }$word" in
      ${pathPatterns(nodes)}) cmdpath="\${cmdpath:+$cmdpath }$word" ;;
    esac
  done
  case "$cmdpath \${COMP_WORDS[COMP_CWORD - 1]}" in
${valueBranches(nodes, (values) => `mapfile -t COMPREPLY < <(compgen -W ${quote(values.join(' '))} -- "$cur"); return 0`)}
  esac
  case "$cmdpath" in
${nodes
  .map(
    (node) =>
      `    ${quote(node.path)}) subcommands=${quote(node.subcommands.map((sub) => sub.name).join(' '))}; flags=${quote(node.flags.map((flag) => flag.name).join(' '))} ;;`,
  )
  .join('\n')}
  esac
  if [[ $cur == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$flags" -- "$cur")
  else
    mapfile -t COMPREPLY < <(compgen -W "$subcommands" -- "$cur")
  fi
}
complete -o default -F _jit jit
`,

  zsh: (nodes) => `#compdef jit
# zsh completion for jit. Load it with: source <(jit completion zsh) (after compinit),
# or save it as _jit in a directory on $fpath.
_jit() {
  local cmdpath='' word i
  local -a subcommands flags
  for ((i = 2; i < CURRENT; i++)); do
    word=\${words[i]}
    [[ $word == -- ]] && { _normal; return; }
    case "\${cmdpath:+$cmdpath }$word" in
      ${pathPatterns(nodes)}) cmdpath="\${cmdpath:+$cmdpath }$word" ;;
    esac
  done
  case "$cmdpath \${words[CURRENT - 1]}" in
${valueBranches(nodes, (values) => `compadd -- ${values.map(quote).join(' ')}; return`)}
  esac
  case "$cmdpath" in
${nodes
  .map((node) => {
    const subcommands = node.subcommands.map((sub) => quote(`${sub.name}:${sub.description}`)).join(' ');
    const flags = node.flags.map((flag) => quote(`${flag.name}:${flag.description}`)).join(' ');
    return `    ${quote(node.path)}) subcommands=(${subcommands}); flags=(${flags}) ;;`;
  })
  .join('\n')}
  esac
  if [[ $PREFIX == -* ]]; then
    _describe -t flags 'flag' flags
  elif (( \${#subcommands} )); then
    _describe -t commands 'command' subcommands
  else
    _files
  fi
}
if [[ $funcstack[1] == _jit ]]; then _jit "$@"; else compdef _jit jit; fi
`,

  fish: (nodes) => `# fish completion for jit. Load it with: jit completion fish | source,
# or save it as ~/.config/fish/completions/jit.fish.
function __jit_path
    set -l cmdpath
    for word in (commandline -opc)[2..-1]
        test "$word" = '--'; and break
        switch (string join -- ' ' $cmdpath $word)
            case ${nodes
              .filter((node) => node.path !== '')
              .map((node) => quote(node.path))
              .join(' ')}
                set cmdpath $cmdpath $word
        end
    end
    string join -- ' ' $cmdpath
end

function __jit_at
    set -l cmdpath (__jit_path)
    test "$cmdpath" = "$argv[1]"
end

${nodes
  .flatMap((node) => {
    const at = `-n "__jit_at ${quote(node.path)}"`;
    return [
      ...node.subcommands.map((sub) => `complete -c jit ${at} -f -a ${quote(sub.name)} -d ${quote(sub.description)}`),
      ...node.flags.map(
        (flag) =>
          `complete -c jit ${at} -l ${quote(flag.name.slice(2))}${flag.takesValue ? ' -r' : ''}${flag.values.length > 0 ? ` -f -a ${quote(flag.values.join(' '))}` : ''} -d ${quote(flag.description)}`,
      ),
    ];
  })
  .join('\n')}
`,
};
