# hubcache in a container, built from this checkout (deploy/compose.yml builds it; the build
# context is the checkout's root: docker build -f deploy/hubcache.Dockerfile .).
FROM python:3.13-slim

# A user of its own, no root (3128 needs none). Its uid is fixed so that a file mounted from the
# host that only hubcache may read (the parent's login, mode 0600) can be given to it: chown 10001.
# A new named volume takes the owner and mode of the directory it is mounted on: these.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/hubcache --no-create-home \
        --shell /usr/sbin/nologin hubcache \
    && install -d -o hubcache -g hubcache -m 0700 /var/lib/hubcache /var/lib/hubcache/store /var/lib/hubcache/confdir

# The package only (pyproject.toml and addon/: what `pip install .` reads), as scripts/install-service
# installs it: a regular install, not editable, so the source goes afterwards.
COPY pyproject.toml /src/
COPY addon /src/addon
RUN pip install --no-cache-dir --disable-pip-version-check /src && rm -rf /src

USER hubcache
EXPOSE 3128
VOLUME ["/var/lib/hubcache/store", "/var/lib/hubcache/confdir"]
# On all of the container's addresses: the port mapping decides who reaches it (compose.yml: the
# host's loopback). Without a proxy login hubcache refuses that unless given
# --set hubcache_open_proxy=allow (compose.yml does: its port is on the host's loopback only), or
# --set proxyauth=@FILE with an htpasswd file mounted there (a port other hosts reach).
# Options go after the image (compose.yml's command): --set NAME=VALUE ...
ENTRYPOINT ["hubcache", "run", "--listen-host", "0.0.0.0", "--listen-port", "3128", \
            "--store", "/var/lib/hubcache/store", "--confdir", "/var/lib/hubcache/confdir"]
