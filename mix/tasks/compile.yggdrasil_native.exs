defmodule Mix.Tasks.Compile.YggdrasilNative do
  @moduledoc """
  Builds the Rust NIF (`native/yggdrasil_nif`) with cargo and installs it
  where `Yggdrasil.Native` loads it: `priv/native/` of the `:yggdrasil`
  application in the build path.

  It does for this package what rustler's mix helper does for rustler-based
  packages. It is our own because this package depends on no hex package at
  all, and the helper (like elixir_make) is one. `mix.exs` requires this file
  from outside `lib/`, so the compiler exists before the project's own code is
  compiled, also when yggdrasil is a path or git dependency.

  ## What it does

    * cargo builds into `_build/<env>/native/yggdrasil` (an explicitly set
      `CARGO_TARGET_DIR` wins), never into the package's sources;
    * the library is installed as `priv/native/libyggdrasil_nif.so`
      (`.dll` on Windows; on macOS cargo's `.dylib` is installed under the
      `.so` name, which is the one the VM loads), next to
      `libyggdrasil_nif.build`, a record of what it was built from;
    * whether to build is decided by a fingerprint: a SHA-256 of the crate
      sources, `Cargo.lock` and the build flags (cargo profile, brokers,
      system architecture, `RUSTFLAGS`). Same fingerprint and no source newer
      than the library: nothing runs. A source newer than the library lets
      cargo decide. Without cargo on `PATH`, a library whose fingerprint
      still matches is kept with a warning; one that does not match stops
      the build with a message saying what to do;
    * `mix compile --force` and `mix deps.compile yggdrasil --force` always
      run cargo (the latter by wiping this app's build manifest).

  ## Configuration

    * `config :yggdrasil, brokers: [:redis]` selects the broker adapters
      compiled into the NIF (cargo features of `yggdrasil_nif`); read at
      compile time, so a parent project's config applies. Default: all.
    * `YGGDRASIL_BROKERS=redis,postgres` (or `none`, or `all`) overrides it.
    * `YGGDRASIL_PREBUILT_NIF=/path/to/libyggdrasil_nif.so` installs that
      library instead of building (a CI artifact, a container layer); cargo
      is not needed, and the library's brokers are the ones it was built with.
    * `YGGDRASIL_CARGO_PROFILE=profiling` builds with another cargo profile
      (default `release`); `profiling` keeps debug info for `perf`.
    * `MIX_ENV=test` and `MIX_ENV=bench` builds of this project also get the
      test hooks (cargo feature `test-hooks`: a panic on purpose, the floors
      under a publish), and `Yggdrasil.Native` their stubs (see
      `test_hooks?/0`). Every other build, and any build as a dependency
      (mix compiles dependencies with `MIX_ENV=prod`), ships without them.

  Mix runs this compiler on every `mix compile` of the project itself and of
  a project that has yggdrasil as a path dependency; as a git or hex
  dependency only when the dependency changed, so after changing any of the
  above there, run `mix deps.compile yggdrasil`.
  """
  use Mix.Task.Compiler

  @crate "yggdrasil_nif"
  # The broker adapters are the default cargo features of the NIF crate: its
  # Cargo.toml is where the list of brokers is kept.
  @nif_manifest "native/yggdrasil_nif/Cargo.toml"
  @root Path.expand("../..", __DIR__)
  # The environments whose builds carry the test hooks.
  @hook_envs [:test, :bench]
  # Everything cargo reads to build the crate; all of it goes into the fingerprint.
  @sources [
    "Cargo.toml",
    "Cargo.lock",
    ".cargo/config.toml",
    "rust-toolchain.toml",
    "native/*/Cargo.toml",
    "native/*/build.rs",
    "native/*/src/**/*"
  ]

  @impl true
  def run(args) do
    {opts, _, _} = OptionParser.parse(args, switches: [force: :boolean])
    force? = Keyword.get(opts, :force, false)

    case System.get_env("YGGDRASIL_PREBUILT_NIF", "") do
      "" -> build(settings(), force?)
      prebuilt -> install_prebuilt(Path.expand(prebuilt), force?)
    end
  end

  @impl true
  def manifests, do: [manifest_path()]

  @doc """
  Whether this build carries the test hooks: the cargo feature `test-hooks`
  here, and their stubs in `Yggdrasil.Native`, which asks this function when
  it compiles, so that the two always agree.
  """
  def test_hooks?, do: Mix.env() in @hook_envs

  @impl true
  def clean do
    Enum.each([installed_library(), build_record(), manifest_path()], &File.rm/1)
  end

  ## Building with cargo

  defp build(settings, force?) do
    sources = source_files()
    fingerprint = fingerprint(settings, sources)

    cond do
      not force? and up_to_date?(fingerprint, sources) ->
        {:noop, []}

      cargo = System.find_executable("cargo") ->
        cargo_build(cargo, settings, fingerprint)

      installed_fingerprint() == fingerprint ->
        keep_without_cargo(fingerprint)

      true ->
        Mix.raise("""
        yggdrasil: `cargo` was not found on PATH, and no library built from these sources \
        and flags (#{describe(settings)}) is installed, so the native engine cannot be built.
        Install Rust (https://rustup.rs) and put `cargo` on PATH, or set \
        YGGDRASIL_PREBUILT_NIF to a libyggdrasil_nif built elsewhere; then run `mix compile` again.
        """)
    end
  end

  defp up_to_date?(fingerprint, sources) do
    installed_fingerprint() == fingerprint and read_manifest() == fingerprint and
      not newer_than_library?(sources)
  end

  defp cargo_build(cargo, settings, fingerprint) do
    Mix.shell().info(
      "Compiling NIF crate #{@crate} (cargo #{Enum.join(settings.cargo_args, " ")})"
    )

    {_, status} =
      System.cmd(cargo, settings.cargo_args,
        cd: @root,
        env: [{"CARGO_TARGET_DIR", settings.target_dir}],
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0 do
      Mix.raise(
        "yggdrasil: `cargo #{Enum.join(settings.cargo_args, " ")}` failed (status #{status})"
      )
    end

    built = Path.join([settings.target_dir, profile_dir(settings.profile), cargo_library_name()])
    install(built, [fingerprint: fingerprint] ++ settings.record)
  end

  defp keep_without_cargo(fingerprint) do
    message =
      "yggdrasil: `cargo` was not found on PATH; keeping #{Path.relative_to_cwd(installed_library())}, " <>
        "which was built from exactly these sources and flags (fingerprint #{String.slice(fingerprint, 0, 12)})"

    Mix.shell().error("warning: " <> message)
    write_manifest(fingerprint)
    {:ok, [diagnostic(message)]}
  end

  ## Installing a library built elsewhere

  defp install_prebuilt(prebuilt, force?) do
    unless File.regular?(prebuilt) do
      Mix.raise("yggdrasil: YGGDRASIL_PREBUILT_NIF=#{prebuilt} is not a file")
    end

    fingerprint = "prebuilt-" <> hash_file(prebuilt)

    if not force? and installed_fingerprint() == fingerprint and read_manifest() == fingerprint do
      {:noop, []}
    else
      Mix.shell().info(
        "yggdrasil: installing the prebuilt NIF #{prebuilt} (YGGDRASIL_PREBUILT_NIF)"
      )

      install(prebuilt, fingerprint: fingerprint, source: "prebuilt #{prebuilt}")
    end
  end

  ## The installed library, its build record and this compiler's manifest

  # Copies to a temporary name and renames, so a running VM that mapped the
  # old library keeps a valid mapping. The old record goes first and the new
  # one comes last, so an interrupted install never passes for a finished one.
  defp install(library, record) do
    File.rm(build_record())
    replace_file(installed_library(), fn tmp -> File.cp!(library, tmp) end)
    replace_file(build_record(), &File.write!(&1, record_text(record)))
    write_manifest(Keyword.fetch!(record, :fingerprint))
    {:ok, []}
  end

  defp replace_file(path, write) do
    File.mkdir_p!(Path.dirname(path))
    tmp = path <> ".tmp"
    write.(tmp)
    File.rename!(tmp, path)
  end

  defp installed_fingerprint do
    with true <- File.regular?(installed_library()),
         {:ok, text} <- File.read(build_record()),
         [_, fingerprint] <- Regex.run(~r/^fingerprint: (\S+)$/m, text) do
      fingerprint
    else
      _ -> nil
    end
  end

  defp newer_than_library?(sources) do
    %{mtime: installed} = File.stat!(installed_library(), time: :posix)
    Enum.any?(sources, &(File.stat!(&1, time: :posix).mtime > installed))
  end

  defp installed_library do
    extension = if match?({:win32, _}, :os.type()), do: ".dll", else: ".so"
    Path.join([Mix.Project.app_path(), "priv", "native", "lib#{@crate}#{extension}"])
  end

  defp build_record, do: Path.join(Path.dirname(installed_library()), "lib#{@crate}.build")

  # Lives in the app's build directory, which `mix deps.compile --force`
  # deletes: a missing manifest makes the next compile run cargo.
  defp manifest_path, do: Path.join(Mix.Project.manifest_path(), "compile.yggdrasil_native")

  defp read_manifest do
    case File.read(manifest_path()) do
      {:ok, fingerprint} -> fingerprint
      {:error, _} -> nil
    end
  end

  defp write_manifest(fingerprint) do
    File.mkdir_p!(Path.dirname(manifest_path()))
    File.write!(manifest_path(), fingerprint)
  end

  ## What to build and how

  defp settings do
    profile = cargo_profile()
    brokers = brokers()
    hooks? = test_hooks?()
    cargo_args = ["build", "--profile", profile, "-p", @crate] ++ feature_args(brokers, hooks?)

    %{
      profile: profile,
      cargo_args: cargo_args,
      target_dir:
        System.get_env("CARGO_TARGET_DIR") ||
          Path.join([Mix.Project.build_path(), "native", "yggdrasil"]),
      # Everything here is in the fingerprint and in the record next to the library.
      record:
        [
          source: "cargo #{Enum.join(cargo_args, " ")}",
          profile: profile,
          brokers: broker_list(brokers),
          test_hooks: hooks?,
          system: :erlang.system_info(:system_architecture)
        ] ++ rustflags()
    }
  end

  defp rustflags do
    case System.get_env("RUSTFLAGS", "") do
      "" -> []
      flags -> [rustflags: flags]
    end
  end

  defp describe(settings) do
    Enum.map_join(Keyword.take(settings.record, [:profile, :brokers]), ", ", fn {key, value} ->
      "#{key}: #{value}"
    end)
  end

  defp record_text(record), do: Enum.map_join(record, fn {key, value} -> "#{key}: #{value}\n" end)

  defp fingerprint(settings, sources) do
    flags = record_text(settings.record)

    sources
    |> Enum.reduce(:crypto.hash_update(:crypto.hash_init(:sha256), flags), fn path, hash ->
      content = File.read!(path)
      name = Path.relative_to(path, @root)
      :crypto.hash_update(hash, [name, 0, <<byte_size(content)::64>>, content])
    end)
    |> :crypto.hash_final()
    |> Base.encode16(case: :lower)
  end

  defp source_files do
    @sources
    |> Enum.flat_map(&Path.wildcard(Path.join(@root, &1)))
    |> Enum.filter(&File.regular?/1)
    |> Enum.sort()
  end

  defp hash_file(path) do
    path
    |> File.stream!([], 65_536)
    |> Enum.reduce(:crypto.hash_init(:sha256), &:crypto.hash_update(&2, &1))
    |> :crypto.hash_final()
    |> Base.encode16(case: :lower)
  end

  defp cargo_profile do
    profile = System.get_env("YGGDRASIL_CARGO_PROFILE", "release")

    unless profile =~ ~r/^[a-z][a-z0-9_-]*$/ do
      Mix.raise("yggdrasil: YGGDRASIL_CARGO_PROFILE=#{profile} is not a cargo profile name")
    end

    profile
  end

  # cargo's output directory for a profile: its built-in profiles share two.
  defp profile_dir(profile) when profile in ["dev", "test"], do: "debug"
  defp profile_dir("bench"), do: "release"
  defp profile_dir(profile), do: profile

  # What cargo names a cdylib on each platform (the installed name is fixed).
  defp cargo_library_name do
    case :os.type() do
      {:win32, _} -> "#{@crate}.dll"
      {:unix, :darwin} -> "lib#{@crate}.dylib"
      {:unix, _} -> "lib#{@crate}.so"
    end
  end

  ## Broker selection

  defp feature_args([], false), do: ["--no-default-features"]

  defp feature_args(brokers, hooks?) do
    cond do
      brokers == known_brokers() and not hooks? ->
        []

      brokers == known_brokers() ->
        ["--features", "test-hooks"]

      true ->
        features =
          Enum.map(brokers, &Atom.to_string/1) ++ if(hooks?, do: ["test-hooks"], else: [])

        ["--no-default-features", "--features", Enum.join(features, ",")]
    end
  end

  # In the order of the NIF crate's `default` features.
  defp known_brokers do
    manifest = File.read!(Path.join(@root, @nif_manifest))

    case Regex.run(~r/^default\s*=\s*\[([^\]]*)\]/m, manifest, capture: :all_but_first) do
      [list] ->
        for [name] <- Regex.scan(~r/"(\w+)"/, list, capture: :all_but_first),
            do: String.to_atom(name)

      nil ->
        Mix.raise("yggdrasil: no `default` features in #{@nif_manifest}")
    end
  end

  defp broker_list([]), do: "none"
  defp broker_list(brokers), do: Enum.join(brokers, ",")

  # The environment variable wins over the application config.
  defp brokers do
    case System.get_env("YGGDRASIL_BROKERS", "") |> String.trim() do
      "" -> Application.get_env(:yggdrasil, :brokers, :all) |> brokers_from_config()
      text -> brokers_from_env(text)
    end
  end

  defp brokers_from_env("all"), do: known_brokers()
  defp brokers_from_env("none"), do: []

  defp brokers_from_env(text) do
    known = Map.new(known_brokers(), &{Atom.to_string(&1), &1})

    text
    |> String.split(",", trim: true)
    |> Enum.map(fn name ->
      Map.get(known, String.trim(name)) ||
        Mix.raise(
          "yggdrasil: unknown broker #{inspect(name)} in YGGDRASIL_BROKERS " <>
            "(known: #{broker_list(known_brokers())}, or all, or none)"
        )
    end)
    |> canonical()
  end

  defp brokers_from_config(:all), do: known_brokers()

  defp brokers_from_config(brokers) when is_list(brokers) do
    case Enum.reject(brokers, &(&1 in known_brokers())) do
      [] ->
        canonical(brokers)

      unknown ->
        Mix.raise(
          "yggdrasil: unknown brokers #{inspect(unknown)} in `config :yggdrasil, brokers: ...` " <>
            "(known: #{inspect(known_brokers())}, or :all)"
        )
    end
  end

  defp brokers_from_config(other) do
    Mix.raise(
      "yggdrasil: `config :yggdrasil, brokers: #{inspect(other)}` must be :all or a list of #{inspect(known_brokers())}"
    )
  end

  # Same selection, same fingerprint: cargo's order, no duplicates.
  defp canonical(brokers), do: Enum.filter(known_brokers(), &(&1 in brokers))

  defp diagnostic(message) do
    %Mix.Task.Compiler.Diagnostic{
      compiler_name: "yggdrasil_native",
      file: installed_library(),
      message: message,
      position: nil,
      severity: :warning
    }
  end
end
