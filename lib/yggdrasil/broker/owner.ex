defmodule Yggdrasil.Broker.Owner do
  @moduledoc false
  # Owns one broker client (see `Yggdrasil.Broker`): gets its warnings and
  # logs each one, naming the client; the client closes when this process
  # dies.
  use GenServer

  require Logger
  require Yggdrasil.Broker.Client

  @doc false
  def start_link, do: GenServer.start_link(__MODULE__, "(opening)")

  @doc false
  # How its warnings name the client, once the client is open.
  def label(owner, label), do: GenServer.cast(owner, {:label, label})

  @doc false
  def stop(owner), do: GenServer.stop(owner)

  @impl GenServer
  def init(label), do: {:ok, label}

  @impl GenServer
  def handle_cast({:label, label}, _label), do: {:noreply, label}

  @impl GenServer
  def handle_info({Yggdrasil.Broker.Client.tag(), :warning, reason}, label) do
    Logger.warning("Yggdrasil #{label}: #{reason}")
    {:noreply, label}
  end

  def handle_info(_other, label), do: {:noreply, label}
end
