defmodule Yggdrasil.Broker.Pacer do
  @moduledoc false
  # Keeps the broker delivery thread from running ahead of the subscribers
  # (`native/yggdrasil_nif/src/broker/pace.rs`): after each budget of sends
  # the thread names one recipient and the number of events it was sent
  # since the last pace, and waits until this process answers. It answers
  # once that recipient's mailbox holds no more than those events (or
  # `@few`): the recipient took what came before. A recipient that has
  # not is looked at again every millisecond; the thread stops waiting on
  # its own after 200 ms.
  #
  # High priority: a pace is answered at once when the subscribers keep up,
  # not after every process the thread woke had its turn.
  use GenServer

  require Yggdrasil.Broker.Client

  alias Yggdrasil.Broker.Client

  # A mailbox this short is never behind.
  @few 8

  @doc false
  def start_link(_), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @impl GenServer
  def init(nil) do
    Process.flag(:priority, :high)
    :ok = Client.set_pacer(self())
    {:ok, %{pace: nil, timer: nil}}
  end

  @impl GenServer
  def handle_info({Client.tag(), :pace, seq, sample, window}, state),
    do: {:noreply, check(%{state | pace: {seq, sample, max(window, @few)}})}

  def handle_info(:check, state), do: {:noreply, check(%{state | timer: nil})}

  def handle_info(_other, state), do: {:noreply, state}

  defp check(%{pace: nil} = state), do: state

  defp check(%{pace: {seq, sample, window}} = state) do
    case Process.info(sample, :message_queue_len) do
      {:message_queue_len, waiting} when waiting > window ->
        %{state | timer: state.timer || Process.send_after(self(), :check, 1)}

      # Caught up, or gone.
      _ ->
        Client.paced(seq)
        %{state | pace: nil}
    end
  end
end
