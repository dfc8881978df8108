# The appliance Python package, built from pyproject.toml with setuptools.
#
# Built as a Python *module* (buildPythonPackage) so that `python.withPackages (_: [ appliance ])` can import it
# (the VM tests run the stand-ins as `python -m appliance.standins.…`); `flake.nix` turns it into the
# application with `toPythonApplication`. The systemd units, the tmpfiles.d and the sysusers.d entry are written
# where NixOS and systemd look for them by the package's own renderer (`appliance units render`, the code that
# `appliance units install` and the nspawn tests use), so no file is patched by hand and none can be missed.
#
# The test suite is not run inside this build (doCheck = false): it needs a Redis server and binds local ports,
# and one failing flaky test should not block installing the package. `passthru.tests.pytest` runs it, and the
# flake exposes that as `checks.<system>.pytest`.
{
  lib,
  python3Packages,
  runCommand,
  # The Redis *server* (pkgs.redis), for the test suite's fixtures; the client library is python3Packages.redis.
  redis,
  # Also propagate the optional SDKs (openai, boto3). The images leave them out of the dependency group and
  # add them in the API group instead.
  withOptional ? true,
}:

let
  ps = python3Packages;
  pyproject = lib.importTOML ../pyproject.toml;

  # Only what the build reads: a change to docs/, images/ or tests/ does not rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../appliance
      (lib.fileset.maybeMissing ../README.md)
    ];
  };

  testSrc = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../tests
    ];
  };

  optionalDependencies = {
    openai = [ ps.openai ];
    s3 = [ ps.boto3 ];
  };

  runtimeDependencies = [
    ps.redis
    ps.hiredis
    ps.pydantic
    ps.sdnotify
    ps.nvidia-ml-py
    ps.aiohttp
    ps.prometheus-client
    ps.pyyaml
  ];

  appliance = ps.buildPythonPackage {
    pname = pyproject.project.name;
    inherit (pyproject.project) version;
    pyproject = true;
    inherit src;

    build-system = [
      ps.setuptools
      ps.wheel
    ];

    dependencies =
      runtimeDependencies ++ lib.optionals withOptional (lib.concatLists (lib.attrValues optionalDependencies));

    optional-dependencies = optionalDependencies;

    # The units where `systemd.packages` and `systemd.tmpfiles.packages` pick them up. $out/bin/appliance is
    # wrapped only in postFixup, so the renderer runs as a module with the installed package first on
    # PYTHONPATH (the dependencies already are, as in pythonImportsCheck); it names $out/bin/appliance, which
    # exists by then, and refuses a path that does not.
    postInstall = ''
      PYTHONPATH="$out/${ps.python.sitePackages}:$PYTHONPATH" ${ps.python.interpreter} -m appliance units render \
        --bin "$out/bin/appliance" \
        --dest "$out/lib/systemd/system" \
        --tmpfiles "$out/lib/tmpfiles.d/appliance.conf" \
        --sysusers "$out/lib/sysusers.d/appliance.conf"
    '';

    doCheck = false;
    pythonImportsCheck = [
      "appliance"
      "appliance.cli"
    ];

    passthru = {
      inherit optionalDependencies runtimeDependencies;
      # Python with appliance and every optional SDK importable: stand-ins, `python -m appliance …`, dev shell.
      pythonEnv = ps.python.withPackages (
        _: [ appliance ] ++ lib.concatLists (lib.attrValues optionalDependencies)
      );
      tests.pytest = pytest;
    };

    meta = {
      description = pyproject.project.description;
      license = lib.licenses.mit;
      mainProgram = "appliance";
      platforms = lib.platforms.linux;
    };
  };

  # The suite against the installed package and a real redis-server (the conftest fixtures start private ones).
  # Left out: tests/systemd (boots systemd-nspawn containers, impossible in the build sandbox) and
  # tests/test_nix.py (needs nix-instantiate, which is not available inside a build).
  pytest =
    runCommand "appliance-pytest-${appliance.version}"
      {
        src = testSrc;
        nativeBuildInputs = [
          (ps.python.withPackages (
            _:
            [
              appliance
              ps.pytest
              ps.pytest-asyncio
              # pyproject's test group: tests/worker/test_storage.py runs moto's S3 server, and
              # [tool.pytest.ini_options] timeout = 600 needs pytest-timeout.
              ps.moto
              ps.pytest-timeout
              # tests/api/test_openapi.py runs its `st` against a live API server.
              ps.schemathesis
            ]
            # moto_server needs flask and friends: the `server` extra where nixpkgs names it, else `all`.
            ++ (ps.moto.optional-dependencies.server or ps.moto.optional-dependencies.all or [ ])
            ++ lib.concatLists (lib.attrValues optionalDependencies)
          ))
          redis
        ];
      }
      ''
        cp -r --no-preserve=mode $src source
        cd source
        export HOME=$TMPDIR
        python -m pytest -p no:cacheprovider -m "not systemd" \
          --ignore=tests/systemd --ignore=tests/test_nix.py tests
        touch $out
      '';
in
appliance
