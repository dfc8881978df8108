# The appliance Python package, built from pyproject.toml with setuptools.
#
# Built as a Python *module* (buildPythonPackage) so that `python.withPackages (_: [ appliance ])` can import it
# (the VM tests run the stand-ins as `python -m appliance.standins.…`); `flake.nix` turns it into the
# application with `toPythonApplication`. The systemd units and the tmpfiles.d entry shipped inside the package
# (appliance/units/), with tmpfiles.d and sysusers.d entries, are also installed where NixOS and systemd look for them, with `@APPLIANCE_BIN@` filled in.
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

    # Install the units where `systemd.packages` and `systemd.tmpfiles.packages` pick them up.
    postInstall = ''
      install -Dm444 -t $out/lib/systemd/system appliance/units/*.service appliance/units/*.target
      substituteInPlace $out/lib/systemd/system/* --replace-fail '@APPLIANCE_BIN@' "$out/bin/appliance"
      # Documentation= names docs/systemd.md, which the wheel's data-files put under $out/share/doc/appliance.
      substituteInPlace $out/lib/systemd/system/* --replace-fail '@APPLIANCE_DOC@' "$out/share/doc/appliance/systemd.md"
      install -Dm444 appliance/units/tmpfiles.conf $out/lib/tmpfiles.d/appliance.conf
      install -Dm444 appliance/units/sysusers.conf $out/lib/sysusers.d/appliance.conf
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
            ]
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
