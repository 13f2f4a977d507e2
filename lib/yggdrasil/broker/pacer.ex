defmodule Yggdrasil.Broker.Pacer do
  @moduledoc false
  # Keeps the broker delivery thread from running ahead of the subscribers
  # (`native/yggdrasil_nif/src/broker/pace.rs`): after each fan-out to many
  # subscribers the thread sends this process a pace and waits for its
  # answer. A process like the subscribers, it runs after the ones woken
  # before it, so the thread sends no faster than they are scheduled.
  use GenServer

  require Yggdrasil.Broker.Client

  alias Yggdrasil.Broker.Client

  @doc false
  def start_link(_), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @impl GenServer
  def init(nil) do
    :ok = Client.set_pacer(self())
    {:ok, nil}
  end

  @impl GenServer
  def handle_info({Client.tag(), :pace, seq}, state) do
    Client.paced(seq)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}
end
