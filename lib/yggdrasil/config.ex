defmodule Yggdrasil.Config do
  @moduledoc """
  Configuration of `:yggdrasil`, read from the application environment:

      config :yggdrasil,
        publisher_options: [size: 1, max_overflow: 5]

  Everything has a default; no configuration is needed.
  """

  @doc """
  Name of the module registry.

      iex> Yggdrasil.Config.module_registry!()
      :"$yggdrasil_registry"
  """
  @spec module_registry!() :: atom()
  def module_registry!,
    do: Application.get_env(:yggdrasil, :module_registry, :"$yggdrasil_registry")

  @doc """
  Options of the publisher pools (`size` workers, up to `max_overflow` more
  under load). With a `namespace`, reads
  `config :yggdrasil, namespace, publisher_options: ...` first, like
  Yggdrasil 6 did.

      iex> Yggdrasil.Config.publisher_options!()
      [size: 1, max_overflow: 5]
  """
  @spec publisher_options!() :: keyword()
  @spec publisher_options!(atom() | nil) :: keyword()
  def publisher_options!(namespace \\ nil)

  def publisher_options!(nil) do
    Application.get_env(:yggdrasil, :publisher_options, size: 1, max_overflow: 5)
  end

  def publisher_options!(namespace) when is_atom(namespace) do
    case Application.get_env(:yggdrasil, namespace)[:publisher_options] do
      nil -> publisher_options!(nil)
      options -> options
    end
  end
end
