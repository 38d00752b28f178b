"""kmodlab: a stand-in for get-pip, ansible-test's bootstrap script, for controllers that cannot reach the site
ansible-test downloads it from (scripts/sanity.sh puts it in ~/.ansible/test/cache/ under the name ansible-test
looks for, and knows it by the words it begins with).

ansible-test runs it in a new virtual environment without pip, with pip's install arguments (pip==X and
get-pip's own --no-setuptools and --no-wheel); it runs pip from the wheel pip-X-*.whl beside it, and installs
pip from that wheel too: --no-index, the wheel's directory the only place pip looks.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")


def main() -> int:
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    wanted = next((arg.split("==", 1)[1] for arg in args if arg.startswith("pip==")), "*")
    wheels = sorted(HERE.glob(f"pip-{wanted}-py3-none-any.whl"))
    if not wheels:
        sys.exit(f"no pip-{wanted} wheel in {HERE}: pip download --no-deps --dest {HERE} pip=={wanted}")
    sys.path.insert(0, str(wheels[-1]))
    from pip._internal.cli.main import main as pip

    return pip(["install", "--no-index", "--find-links", str(HERE), *args])


if __name__ == "__main__":
    sys.exit(main())
