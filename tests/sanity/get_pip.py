"""Stand-in for the pip bootstrap script ansible-test downloads (get-pip.py from
ci-files.testing.ansible.com, a host this project's machines cannot reach).

ansible-test runs it as ``python get_pip.py [PIP OPTIONS] PACKAGE==VERSION ... [--no-setuptools]
[--no-wheel]`` with the fresh virtualenv's python: install pip with the standard library's
ensurepip, then let that pip install the pinned packages from the package index.
"""

import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}  # get-pip.py's own switches, not pip's

subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
arguments = [argument for argument in sys.argv[1:] if argument not in GET_PIP_ONLY]
subprocess.run([sys.executable, "-m", "pip", "install", *arguments], check=True)
