"""The documents' links resolve, the README's commands are the ones CI runs, and every command of its
sh blocks names a script, flag and key that exist."""
import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import bench
import config
import evaluate
import generate
import train
import utils
from conftest import ROOT, tool

LINK = re.compile(r'\]\(([^)\s]+)\)|src="([^"]+)"')
SH_BLOCK = re.compile(r'```sh\n(.*?)\n```', re.S)  # a Markdown sh block's commands


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters, hyphens and spaces
    kept, so 'क' and '_' stay), spaces made hyphens."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(text):
    """Every heading's anchor in a Markdown text, a repeated one numbered as GitHub numbers it (-1, -2)."""
    found, seen = set(), {}
    for heading in re.findall(r'(?m)^#{1,6} (.+)$', re.sub(r'```.*?```', '', text, flags=re.S)):
        n = seen.get(slug(heading), 0)
        seen[slug(heading)] = n + 1
        found.add(slug(heading) if n == 0 else f'{slug(heading)}-{n}')
    return found


def broken_links(root):
    """'file: target' for every relative link, #anchor and image path in root's README.md and docs/*.md
    that does not resolve."""
    broken = []
    for doc in [root / 'README.md', *sorted((root / 'docs').glob('*.md'))]:
        text = doc.read_text(encoding='utf-8')
        for target in (a or b for a, b in LINK.findall(re.sub(r'```.*?```', '', text, flags=re.S))):
            if re.match(r'[a-z]+:', target):  # https:, mailto:
                continue
            path, _, anchor = target.partition('#')
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists() or (anchor and (linked.suffix != '.md' or anchor not in
                                                   anchors(linked.read_text(encoding='utf-8')))):
                broken.append(f'{doc.relative_to(root)}: {target}')
    return broken


def test_every_link_anchor_and_image_resolves():
    assert broken_links(ROOT) == []


def test_a_planted_broken_link_is_found(tmp_path):
    shutil.copy(ROOT / 'README.md', tmp_path)
    shutil.copytree(ROOT / 'docs', tmp_path / 'docs')
    (tmp_path / 'images').mkdir()
    assert {line.split(': ', 1)[1] for line in broken_links(tmp_path)} >= {'../images/recipe_bound_vs_minutes.png'}
    with open(tmp_path / 'docs' / 'speed.md', 'a', encoding='utf-8') as doc:
        doc.write('\nSee [the recipe](recipe.md#no-such-heading), [a file](missing.md) and [here](#speed).\n')
    found = broken_links(tmp_path)
    assert 'docs/speed.md: recipe.md#no-such-heading' in found and 'docs/speed.md: missing.md' in found
    assert 'docs/speed.md: #speed' not in found  # the document's own title


def test_anchors_follow_githubs_rules():
    text = '# Speed\n## Several processes or GPUs: torchrun\n## `minutes` and क\n## Speed\n```\n# not a heading\n```'
    assert anchors(text) == {'speed', 'several-processes-or-gpus-torchrun', 'minutes-and-क', 'speed-1'}


def test_the_readmes_commands_are_the_ones_ci_runs():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    commands = SH_BLOCK.findall(readme)
    assert commands[:2] == ['pip install -r requirements.txt && python train.py', 'python -m pytest -q']
    ci = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines() if line and not line.startswith('#')]
    assert ci[-2:] == ['pip install -r requirements.txt', 'python -m pytest -q']


def test_the_readme_stays_a_transcript():
    """docs/tests.md's habit: at most 200 lines, one sitting's date, no test counts or suite times."""
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert len(readme.splitlines()) <= 200
    assert len(set(re.findall(r'\b20\d\d-\d\d-\d\d\b', readme))) <= 1
    assert not re.search(r'\b\d+ (passed|tests\b)|passed in \d', readme)


def test_every_python_file_stays_under_400_lines():
    """Small files with clear roles (STYLE.md): a file that grows past 400 lines is split by role."""
    long = {str(p.relative_to(ROOT)): n for p in ROOT.glob('**/*.py') if '.git' not in p.parts
            and (n := len(p.read_text(encoding='utf-8').splitlines())) >= 400}
    assert not long, long


def checked_bench(argv):
    _, overrides = bench.parse_args(argv)
    config.check_params(config.apply_overrides(train.params, overrides))


PARSERS = {'train.py': train.configure, 'generate.py': generate.parse_args, 'evaluate.py': evaluate.parse_args,
           'bench.py': checked_bench, 'tools/webcheck.py': tool('webcheck').parse_args}


def sh_commands(markdown):
    """Every command of a Markdown text's sh blocks as its words: `&&` chains split, comments dropped, a block's
    NAME=value lines put in for $NAME in its later lines."""
    commands = []
    for block in SH_BLOCK.findall(markdown):
        names = {}
        for line in block.splitlines():
            words = [re.sub(r'\$(\w+)', lambda m: names.get(m[1], m[0]), w) for w in shlex.split(line, comments=True)]
            if len(words) == 1 and re.fullmatch(r'[A-Z_0-9]+=\S*', words[0]):
                name, _, value = words[0].partition('=')
                names[name] = value
                continue
            while words:
                end = words.index('&&') if '&&' in words else len(words)
                commands.append(words[:end])
                words = words[end + 1:]
    return commands


def command_error(words):
    """Why a command would fail on its arguments alone (an unknown script, flag or key, a bad value), or None;
    the scripts' own argument checks decide, without running them."""
    match words:
        case ['pip', 'install', '-r', path]:
            return None if (ROOT / path).exists() else f'{path} does not exist'
        case ['pip', 'install', *_] | ['python', '-m', 'pytest', *_]:
            return None
        case ['python', script, *argv] if script in PARSERS:
            said = io.StringIO()
            try:
                with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
                    PARSERS[script](argv)
            except SystemExit as stop:
                return None if stop.code == 0 else said.getvalue().strip().splitlines()[-1]
            except utils.InputError as error:
                return str(error)
            return None
    return 'no check for this command: add its script to PARSERS in tests/test_docs.py'


def test_every_command_of_the_readme_parses():
    commands = sh_commands((ROOT / 'README.md').read_text(encoding='utf-8'))
    assert len(commands) >= 8
    assert [(' '.join(c), command_error(c)) for c in commands if command_error(c)] == []


def test_a_wrong_command_in_the_readme_is_found():
    wrong = ('```sh\nHAND=ka,kha\npython train.py classes=$HAND no_such_key=1  # a comment\n'
             'python generate.py -load_path x -no_such_flag\npython evaluate.py\n```\n'
             '```sh\npip install -r no-such.txt && python webpage.py -screenshot\npython bench.py epoch_num=x\n```')
    commands = sh_commands(wrong)
    assert commands[0] == ['python', 'train.py', 'classes=ka,kha', 'no_such_key=1']
    errors = [command_error(c) for c in commands]
    assert "unknown key 'no_such_key'" in errors[0] and 'unrecognized arguments: -no_such_flag' in errors[1]
    assert 'required: -load_path' in errors[2] and 'no-such.txt does not exist' in errors[3]
    assert errors[4].startswith('no check for this command') and 'epoch_num' in errors[5]


@pytest.mark.slow
def test_every_script_of_the_readme_starts():
    scripts = {c[1] for c in sh_commands((ROOT / 'README.md').read_text(encoding='utf-8')) if c[0] == 'python'}
    for script in sorted(scripts - {'-m'}):
        done = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.strip(), (script, done.stderr[-2000:])
