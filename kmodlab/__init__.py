"""kmodlab: a local fleet of real Debian virtual machines for testing kernel modules.

One module per job: distros (what can be built), mirror (where packages come
from), images (base disks, cached), vm (one machine's life), fleet (a lab of
machines, its ssh key, known_hosts and Ansible inventory), cli (the command line).
"""


class LabError(Exception):
    """An error the user can act on; the CLI prints it without a traceback."""
