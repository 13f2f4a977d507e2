defmodule Yggdrasil.Channel do
  @moduledoc """
  A channel: what subscribers listen to and publishers publish on.

  - `name`: any term identifying the channel (for `:bridge`, another channel).
  - `adapter`: the adapter alias or module (default `:elixir`).
  - `transformer`: encodes and decodes messages (adapter's default when `nil`).
  - `backend`: distributes messages to subscribers (adapter's default when `nil`).
  - `namespace`: the adapter's configuration namespace.
  - `metadata`: set on received events to the publisher's metadata.

  Two channels are the same channel when all fields but `metadata` are equal
  (`===`), so `"a"` and `:a` are different names.

      iex> %Yggdrasil.Channel{name: "room"}
      %Yggdrasil.Channel{name: "room", adapter: :elixir, transformer: nil, backend: nil, namespace: nil, metadata: nil}
  """

  defstruct name: nil,
            adapter: :elixir,
            transformer: nil,
            namespace: nil,
            backend: nil,
            metadata: nil

  @typedoc """
  A channel. `adapter`, `transformer` and `backend` are aliases
  (`:elixir`, `:json`) or modules; `Yggdrasil.gen_channel/1` fills
  `transformer` and `backend` in from the adapter's defaults.
  """
  @type t :: %__MODULE__{
          name: term(),
          adapter: atom() | module(),
          transformer: atom() | module() | nil,
          namespace: atom() | nil,
          backend: atom() | module() | nil,
          metadata: term()
        }

  @doc false
  # The engine's key for a channel: the struct without metadata.
  @spec key(t()) :: t()
  def key(%__MODULE__{metadata: nil} = channel), do: channel
  def key(%__MODULE__{} = channel), do: %__MODULE__{channel | metadata: nil}

  @doc false
  # The one answer to something that is not a channel, wherever a channel
  # was expected: `{:error, reason}` ...
  @spec not_a_channel(term()) :: {:error, binary()}
  def not_a_channel(other), do: {:error, not_a_channel_message(other)}

  @doc false
  # ... or an `ArgumentError` where the function returns no error tuple.
  @spec not_a_channel!(term()) :: no_return()
  def not_a_channel!(other), do: raise(ArgumentError, not_a_channel_message(other))

  defp not_a_channel_message(other), do: "not a channel: #{inspect(other)}"
end
