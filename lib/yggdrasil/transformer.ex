defmodule Yggdrasil.Transformer do
  @moduledoc """
  Transformers encode messages before publishing and decode them before
  delivery. Define one with an alias:

      defmodule MyApp.Upcase do
        use Yggdrasil.Transformer, name: :upcase

        def encode(_channel, text) when is_binary(text), do: {:ok, String.upcase(text)}
        def encode(_channel, _), do: {:error, "not text"}
      end

  and register it (`MyApp.Upcase.register()`, or `{MyApp.Upcase, []}` in a
  supervisor). `decode/2` and `encode/2` default to the identity.

  Built in: `:default` (identity) and `:json`.
  """

  alias Yggdrasil.Channel
  alias Yggdrasil.Registry

  @doc """
  Decodes a `message` that arrived on `channel` into what subscribers
  receive.
  """
  @callback decode(channel :: Channel.t(), message :: term()) :: {:ok, term()} | {:error, term()}

  @doc "Encodes a `message` published on `channel` into what the adapter carries."
  @callback encode(channel :: Channel.t(), message :: term()) :: {:ok, term()} | {:error, term()}

  defmacro __using__(options) do
    name = Yggdrasil.Registration.fetch_name!(options, "Yggdrasil.Transformer")

    quote do
      @behaviour Yggdrasil.Transformer
      use Yggdrasil.Registration, register: {:register_transformer, unquote(name)}

      @doc "Decodes `message` of `channel` (by default: unchanged)."
      @spec decode(Yggdrasil.Channel.t(), term()) :: {:ok, term()} | {:error, term()}
      def decode(channel, message), do: Yggdrasil.Transformer.identity(channel, message)

      @doc "Encodes `message` of `channel` (by default: unchanged)."
      @spec encode(Yggdrasil.Channel.t(), term()) :: {:ok, term()} | {:error, term()}
      def encode(channel, message), do: Yggdrasil.Transformer.identity(channel, message)

      defoverridable decode: 2, encode: 2
    end
  end

  @doc false
  def identity(%Channel{}, message), do: {:ok, message}
  def identity(other, _message), do: Channel.not_a_channel(other)

  @doc "Decodes `message` with the channel's transformer."
  @spec decode(Channel.t(), term()) :: {:ok, term()} | {:error, term()}
  def decode(%Channel{transformer: name} = channel, message) do
    with {:ok, module} <- Registry.get_transformer_module(name) do
      module.decode(channel, message)
    end
  end

  def decode(other, _message), do: Channel.not_a_channel(other)

  @doc "Encodes `message` with the channel's transformer."
  @spec encode(Channel.t(), term()) :: {:ok, term()} | {:error, term()}
  def encode(%Channel{transformer: name} = channel, message) do
    with {:ok, module} <- Registry.get_transformer_module(name) do
      module.encode(channel, message)
    end
  end

  def encode(other, _message), do: Channel.not_a_channel(other)
end
