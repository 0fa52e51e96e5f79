"""The documents' links resolve, and the README's commands are the ones CI runs."""
import re
import shutil

from conftest import ROOT

LINK = re.compile(r'\]\(([^)\s]+)\)|src="([^"]+)"')


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
    commands = re.findall(r'```sh\n(.*?)\n```', readme, re.S)
    assert commands[:2] == ['pip install -r requirements.txt && python train.py', 'python -m pytest -q']
    ci = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines() if line and not line.startswith('#')]
    assert ci[-2:] == ['pip install -r requirements.txt', 'python -m pytest -q']
