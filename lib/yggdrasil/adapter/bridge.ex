defmodule Yggdrasil.Adapter.Bridge do
  @moduledoc """
  The `:bridge` adapter: use, from this node, an adapter that is only
  installed on another connected node.

  The name of a `:bridge` channel is the remote channel (a struct, map or
  keyword list). `Yggdrasil.gen_channel/1` builds one by itself when the
  requested adapter is registered on another node only:

      # on a node without the :redis adapter, connected to one that has it
      {:ok, channel} = Yggdrasil.gen_channel(name: "feed", adapter: :redis)
      channel.adapter #=> :bridge
      channel.name    #=> %Yggdrasil.Channel{name: "feed", adapter: :redis}

      Yggdrasil.subscribe(channel)        # {:Y_CONNECTED, channel} once the remote side is up
      Yggdrasil.publish(channel, "hello") # published by the remote node
      # => {:Y_EVENT, channel, "hello"}

  Subscribing starts, on the node running the adapter, a process that
  subscribes to the remote channel there and forwards what it gets
  (`:Y_CONNECTED`, `:Y_DISCONNECTED`, events with their metadata). It stops
  when the local subscription ends; when the remote node goes away the
  subscribers get `{:Y_DISCONNECTED, channel}`, and `{:Y_CONNECTED, channel}`
  again once a node with the adapter is back.
  """
  use Yggdrasil.Adapter, name: :bridge

  alias Yggdrasil.Channel
  alias Yggdrasil.Registry

  @rpc_timeout 5_000

  @doc """
  Splits a `:bridge` channel into `{local, remote}`: `remote` is the wrapped
  channel completed by a node where its adapter runs, and `local` is the
  `:elixir` channel `{:"$yggdrasil_bridge", remote}` that stands for it on
  this node (the bridge's transformer, backend and namespace).
  """
  @spec split_channels(Channel.t()) :: {:ok, {Channel.t(), Channel.t()}} | {:error, term()}
  def split_channels(%Channel{name: name} = bridge) do
    with {:ok, remote} <- remote_channel(name),
         {:ok, node} <- Registry.get_adapter_node(remote.adapter),
         {:ok, remote} <- rpc(node, Registry, :get_full_channel, [remote]) do
      local = %Channel{
        bridge
        | name: {:"$yggdrasil_bridge", remote},
          adapter: :elixir,
          metadata: nil
      }

      {:ok, {local, remote}}
    end
  end

  def split_channels(other), do: Yggdrasil.Channel.not_a_channel(other)

  @doc false
  # The wrapped channel as a struct (not completed; metadata dropped).
  @spec remote_channel(term()) :: {:ok, Channel.t()} | {:error, binary()}
  def remote_channel(%Channel{} = remote), do: {:ok, %Channel{remote | metadata: nil}}

  def remote_channel(remote) when is_map(remote) and not is_struct(remote),
    do: remote |> Map.to_list() |> remote_channel()

  def remote_channel([_ | _] = remote) do
    fields = Map.keys(%Channel{}) -- [:__struct__, :metadata]

    if Keyword.keyword?(remote) and Keyword.keys(remote) -- fields == [],
      do: {:ok, struct(Channel, remote)},
      else: bad_remote(remote)
  end

  def remote_channel(remote), do: bad_remote(remote)

  defp bad_remote(remote) do
    {:error, "Yggdrasil bridge: the channel name must be a channel, got: #{inspect(remote)}"}
  end

  @doc false
  # `:erpc.call/5` with errors as `{:error, _}`.
  @spec rpc(node(), module(), atom(), list(), timeout()) :: term()
  def rpc(node, module, function, args, timeout \\ @rpc_timeout) do
    :erpc.call(node, module, function, args, timeout)
  catch
    :error, {:erpc, reason} -> {:error, {:erpc, node, reason}}
    :error, {:exception, reason, _stack} -> {:error, {:remote_exception, node, reason}}
    :exit, reason -> {:error, {:remote_exit, node, reason}}
    :throw, value -> {:error, {:remote_throw, node, value}}
  end
end
