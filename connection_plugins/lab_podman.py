# The lab's connection: containers.podman.podman with pipelining. The collection's plugin
# runs `podman exec` without -i, so a module cannot come in on stdin and every task costs
# four execs (mkdir, copy, run, rm). With -i one exec runs the module: converge and the
# idempotence run take a fraction of the time. Production uses ssh; only the lab uses this.

from __future__ import annotations

DOCUMENTATION = """
    name: lab_podman
    short_description: Run tasks in the lab's podman containers, pipelined
    description:
        - containers.podman.podman with C(podman exec -i), so modules are pipelined.
    options:
      remote_addr:
        description: The name of the container.
        default: inventory_hostname
        vars:
          - name: ansible_host
          - name: inventory_hostname
          - name: ansible_podman_host
      remote_user:
        description: User to run commands as inside the container.
        vars:
          - name: ansible_user
      podman_extra_args:
        description: Extra arguments to the podman command line.
        default: ''
        vars:
          - name: ansible_podman_extra_args
        env:
          - name: ANSIBLE_PODMAN_EXTRA_ARGS
      podman_executable:
        description: The podman executable.
        default: podman
        vars:
          - name: ansible_podman_executable
        env:
          - name: ANSIBLE_PODMAN_EXECUTABLE
      pipelining:
        description: Send modules on stdin of one C(podman exec -i).
        type: boolean
        default: true
        vars:
          - name: ansible_pipelining
"""

import shlex

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.connection import ensure_connect
from ansible_collections.containers.podman.plugins.connection.podman import Connection as PodmanConnection


# podman's own failures (no such container, container not running), as opposed to the
# exit status of the command it ran.
PODMAN_ERROR_RCS = (125, 255)


class Connection(PodmanConnection):
    transport = "lab_podman"
    has_pipelining = True

    @ensure_connect
    def exec_command(self, cmd, in_data=None, sudoable=False):
        # ConnectionBase.exec_command only logs; the parent's would run exec without -i.
        super(PodmanConnection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        args = ["exec", "-i"] if in_data is not None else ["exec"]
        if self.user:
            args += ["--user", self.user]
        rc, stdout, stderr = self._podman(args, shlex.split(to_native(cmd, errors="surrogate_or_strict")), in_data)
        # Unpipelined, a stopped container failed the temporary directory's mkdir and the
        # host was unreachable; a pipelined module would come back as a module failure.
        if rc in PODMAN_ERROR_RCS and stderr.startswith(b"Error: "):
            raise AnsibleConnectionFailure(f"podman exec in {self._container_id}: {to_native(stderr).strip()}")
        return rc, stdout, stderr
