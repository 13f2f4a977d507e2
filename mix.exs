# The mix compiler that builds the NIF; outside lib/ because it must exist
# before this project's code compiles (also as a path or git dependency).
Code.require_file("mix/tasks/compile.yggdrasil_native.exs", __DIR__)

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
      files: ~w(lib mix native Cargo.toml Cargo.lock priv/native/.gitkeep
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
