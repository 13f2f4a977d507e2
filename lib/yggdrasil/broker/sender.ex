defmodule Yggdrasil.Broker.Sender do
  @moduledoc false
  # Sends its share of the wide fan-outs of broker channels that the
  # delivery thread serves itself (`native/yggdrasil_nif/src/broker/senders.rs`):
  # one sender per scheduler, so that a wide channel's sends run on the
  # schedulers, at the pace a process sends, and on all of them at once.
  #
  # A subscriber's share depends on its pid alone and a sender takes its
  # jobs in order, so each subscriber gets a channel's events and notices
  # in order. A sender only resumes fan-outs, which do not fail; should one
  # die anyway, what was in its mailbox is lost: the subscribers of its
  # share on each wide channel are told of a gap (`Y_DISCONNECTED`,
  # `Y_CONNECTED`) by its successor as it registers (`set_sender`), or
  # before the channel's next event if that comes first, and the delivery
  # thread sends its share itself until the restart.
  use GenServer

  require Yggdrasil.Broker.Client

  alias Yggdrasil.Broker.Client
  alias Yggdrasil.Engine

  @doc false
  # A supervisor of one sender per scheduler.
  def child_spec(_) do
    of = System.schedulers_online()

    senders =
      for index <- 0..(of - 1) do
        %{id: {__MODULE__, index}, start: {__MODULE__, :start_link, [{index, of}]}}
      end

    %{
      id: __MODULE__,
      type: :supervisor,
      start: {Supervisor, :start_link, [senders, [strategy: :one_for_one, name: __MODULE__]]}
    }
  end

  @doc false
  def start_link({index, of}), do: GenServer.start_link(__MODULE__, {index, of})

  @impl GenServer
  def init({index, of}) do
    :ok = Client.set_sender(index, of, self())
    {:ok, nil}
  end

  @impl GenServer
  def handle_info({Client.tag(), :send, cursor, message}, state) do
    :ok = Engine.resume_broadcast(cursor, message)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}
end
