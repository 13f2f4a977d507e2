defmodule Yggdrasil.UseStateTest do
  # Spec section 3: a `use Yggdrasil` process's state is
  # `%Yggdrasil{module: module, state: user_state}`, as in Yggdrasil 6;
  # applications' tests read `:sys.get_state(pid).state`.
  use ExUnit.Case, async: true

  defmodule Counter do
    use Yggdrasil

    def start_link({channel, parent}), do: Yggdrasil.start_link(__MODULE__, {channel, parent})

    @impl Yggdrasil
    def init({channel, parent}), do: {:subscribe, [channel], %{parent: parent, events: []}}

    @impl Yggdrasil
    def handle_connect(channel, state) do
      send(state.parent, {:connected, channel})
      {:ok, state}
    end

    @impl Yggdrasil
    def handle_event(_channel, :leave, state), do: {:unsubscribe, [state.channel], state}

    def handle_event(channel, message, state) do
      state = state |> Map.put(:channel, channel) |> Map.update!(:events, &[message | &1])
      send(state.parent, {:handled, message})
      {:ok, state}
    end
  end

  test "the wrapper's state is %Yggdrasil{module:, state:}, kept through callbacks" do
    {:ok, channel} = Yggdrasil.gen_channel(name: {:use_state, make_ref()})
    pid = start_supervised!({Counter, {channel, self()}})
    assert_receive {:connected, ^channel}

    assert %Yggdrasil{module: Counter, state: %{events: []}} = :sys.get_state(pid)

    :ok = Yggdrasil.publish(channel, 1)
    :ok = Yggdrasil.publish(channel, 2)
    assert_receive {:handled, 2}
    assert :sys.get_state(pid).state.events == [2, 1]
    assert :sys.get_state(pid).module == Counter

    # A callback returning {:unsubscribe, _, state} keeps the struct too.
    :ok = Yggdrasil.publish(channel, :leave)
    assert %Yggdrasil{state: %{events: [2, 1]}} = :sys.get_state(pid)
    assert Yggdrasil.subscriber_count(channel) == 0
  end

  test "%Yggdrasil{} has exactly the fields :module and :state" do
    assert %Yggdrasil{} |> Map.from_struct() |> Map.keys() |> Enum.sort() == [:module, :state]
  end
end
