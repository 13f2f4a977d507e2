defmodule Yggdrasil.Transformer.Json do
  @moduledoc """
  The `:json` transformer: maps are published as JSON text and subscribers
  receive maps with string keys. JSON is handled natively (serde_json).

      iex> Yggdrasil.Transformer.Json.encode(%Yggdrasil.Channel{}, %{"hello" => "world"})
      {:ok, ~s({"hello":"world"})}
      iex> Yggdrasil.Transformer.Json.decode(%Yggdrasil.Channel{}, ~s({"n":[1,2.5,null,true]}))
      {:ok, %{"n" => [1, 2.5, nil, true]}}
      iex> {:error, _reason} = Yggdrasil.Transformer.Json.decode(%Yggdrasil.Channel{}, "{oops")

  Encoding follows Jason's mapping: atom keys and values become strings,
  `nil` becomes `null`. Tuples, pids, structs and non-UTF-8 binaries give
  `{:error, reason}`. As with Jason, any nesting depth works both ways, and
  integers of any size stay exact both ways; `-0` decodes to the integer
  `0`, `-0.0` to a float.
  """
  use Yggdrasil.Transformer, name: :json

  alias Yggdrasil.Channel
  alias Yggdrasil.Engine

  # Large or deep terms go to a dirty scheduler (see Yggdrasil.Engine).
  @impl Yggdrasil.Transformer
  def decode(%Channel{}, message) when is_binary(message), do: Engine.json_decode(message)

  def decode(%Channel{}, message),
    do: {:error, "JSON decode expects a binary, got: #{inspect(message)}"}

  def decode(other, _message), do: Yggdrasil.Channel.not_a_channel(other)

  @impl Yggdrasil.Transformer
  def encode(%Channel{}, message) when is_map(message) and not is_struct(message) do
    Engine.json_encode(message)
  end

  def encode(%Channel{}, message),
    do: {:error, "JSON encode expects a map, got: #{inspect(message)}"}

  def encode(other, _message), do: Yggdrasil.Channel.not_a_channel(other)
end
