defmodule Yggdrasil.Publisher.Adapter.Bridge do
  @moduledoc """
  Publisher adapter of `:bridge` channels (see `Yggdrasil.Adapter.Bridge`):
  encodes with the bridge channel's transformer, then has a node where the
  wrapped channel's adapter runs publish it there (`Yggdrasil.publish/3`
  through `:erpc`), and returns that node's answer. The call runs in the
  publishing process and waits for the remote publish, so one publisher's
  messages keep their order.
  """
  use Yggdrasil.Publisher.Adapter, worker: :stateless

  alias Yggdrasil.Adapter.Bridge
  alias Yggdrasil.Channel
  alias Yggdrasil.Registry
  alias Yggdrasil.Transformer

  @impl Yggdrasil.Publisher.Adapter
  def publish(_publisher, %Channel{name: name} = bridge, message, options) do
    with {:ok, remote} <- Bridge.remote_channel(name),
         {:ok, encoded} <- Transformer.encode(bridge, message),
         {:ok, node} <- Registry.get_adapter_node(remote.adapter) do
      Bridge.rpc(node, Yggdrasil, :publish, [remote, encoded, options])
    end
  end

  def publish(_publisher, other, _message, _options), do: Channel.not_a_channel(other)
end
