defmodule Mix.Tasks.Compile.YggdrasilNative do
  @moduledoc false
  # Builds the Rust NIF with cargo and copies it into priv/native/.
  #
  # Defined here, not in lib/, because it must exist before the project's own
  # code is compiled, also when this package is a path or git dependency of
  # another project. No hex package (rustler's mix helper, elixir_make) is
  # needed or available.
  use Mix.Task.Compiler

  @crate "yggdrasil_nif"
  @sources ["Cargo.toml", "Cargo.lock", "native/*/Cargo.toml", "native/*/src/**/*.rs"]

  @impl true
  def run(_args) do
    root = Path.dirname(__ENV__.file)
    target = Path.join(root, "priv/native/lib#{@crate}.so")

    if stale?(root, target) do
      build(root, target)
    else
      {:noop, []}
    end
  end

  defp stale?(root, target) do
    case File.stat(target, time: :posix) do
      {:ok, %{mtime: built}} ->
        @sources
        |> Enum.flat_map(&Path.wildcard(Path.join(root, &1)))
        |> Enum.any?(fn source -> File.stat!(source, time: :posix).mtime > built end)

      {:error, _} ->
        true
    end
  end

  defp build(root, target) do
    cargo = System.find_executable("cargo")

    unless cargo do
      Mix.raise("""
      yggdrasil: `cargo` was not found on PATH, so the native engine cannot be built.
      Install Rust (https://rustup.rs), make sure `cargo` is on PATH, then run `mix compile` again.
      """)
    end

    Mix.shell().info("Compiling NIF crate #{@crate} (cargo build --release)")

    {_, status} =
      System.cmd(cargo, ["build", "--release", "--quiet", "-p", @crate],
        cd: root,
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0 do
      Mix.raise("yggdrasil: `cargo build --release -p #{@crate}` failed with status #{status}")
    end

    built = Path.join([target_dir(root), "release", "lib#{@crate}.so"])
    File.mkdir_p!(Path.dirname(target))
    # Copy to a temporary name and rename, so a running VM that mapped the
    # old file keeps a valid mapping.
    tmp = target <> ".tmp"
    File.cp!(built, tmp)
    File.rename!(tmp, target)
    {:ok, []}
  end

  defp target_dir(root) do
    System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")
  end
end

defmodule Yggdrasil.MixProject do
  use Mix.Project

  @version "6.1.0"

  def project do
    [
      app: :yggdrasil,
      version: @version,
      elixir: "~> 1.14",
      compilers: [:yggdrasil_native] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      description: "Yggdrasil 6 pub/sub API with a native (Rust NIF) distribution engine",
      package: package(),
      deps: []
    ]
  end

  # What a package of this project must carry: the Elixir sources, and the
  # Rust workspace the NIF is built from when it is compiled as a dependency
  # (never a built `.so`, which is platform-specific).
  defp package do
    [
      licenses: ["Apache-2.0"],
      links: %{},
      files: ~w(lib native Cargo.toml Cargo.lock priv/native/.gitkeep
                mix.exs .formatter.exs README.md LICENSE docs)
    ]
  end

  def application do
    [
      extra_applications: [:logger],
      mod: {Yggdrasil.Application, []}
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
