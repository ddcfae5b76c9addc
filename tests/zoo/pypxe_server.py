"""Start PyPXE's NBD server (pypxe.nbd.NBD, Python 2) on a kernel-chosen port of 127.0.0.1.

PyPXE has no NBD-only command: its `pypxe.server` also starts DHCP/TFTP/HTTP services. This
launcher builds the same `NBD(...)` object that `pypxe.server --nbd IMAGE --nbd-write` builds
(writes on, copy-on-write on disk: the command's defaults) with port 0, prints
"LISTENING tcp://127.0.0.1:PORT EXPORT" and serves until killed.

Usage: python2.7 pypxe_server.py PYPXE_SOURCE_DIR WORK_DIR SIZE_BYTES
The export is WORK_DIR/disk.img, filled with a pattern; its NBD export name is "disk.img"
(PyPXE only serves the export named exactly like its block device argument).
"""
import os
import sys


def main():
    source, work, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.path.insert(0, source)
    os.chdir(work)  # the copy-on-write files go to the current directory
    with open('disk.img', 'wb') as image:
        image.write(bytearray((i * 7 + 3) & 0xFF for i in range(size)))
    from pypxe.nbd.nbd import NBD
    server = NBD(block_device='disk.img', write=True, cow=True, in_mem=False,
                     ip='127.0.0.1', port=0, netboot_directory=work)
    port = server.sock.getsockname()[1]
    # Python 2: no f-strings.
    sys.stdout.write('LISTENING tcp://127.0.0.1:%d disk.img\n' % port)  # noqa: UP031
    sys.stdout.flush()
    server.listen()


if __name__ == '__main__':
    main()
